from common.runtime.lifecycle import run
from payment_svc.app import PaymentService

run(PaymentService)
