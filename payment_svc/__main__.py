from common.runtime.lifecycle import run
from payment_svc.bootstrap import PaymentService

run(PaymentService)
