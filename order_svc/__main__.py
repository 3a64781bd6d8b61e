from common.runtime.lifecycle import run
from order_svc.app import OrderService

run(OrderService)
