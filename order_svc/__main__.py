from common.runtime.lifecycle import run
from order_svc.bootstrap import OrderService

run(OrderService)
