import asyncio

from tenacity import AsyncRetrying, Retrying, retry_if_exception_type, stop_after_delay, wait_fixed


async def eventually(check, timeout=10):
    """Await `check()` (sync or async) until it stops raising AssertionError, within `timeout` seconds."""
    async for attempt in AsyncRetrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.05), reraise=True,
                                       retry=retry_if_exception_type(AssertionError)):
        with attempt:
            result = check()
            if asyncio.iscoroutine(result):
                await result


def wait_for(check, timeout=15):
    """Blocking twin of `eventually` for tests that drive real processes."""
    for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.1), reraise=True,
                            retry=retry_if_exception_type(AssertionError)):
        with attempt:
            return check()
