"""Dead letters: messages a consumer can never process, kept in `<queue>.dead` with why and whence.

`dead_letter` (the services' side) moves a message there with its reason in its headers (`headers`), and
`dead_letter_entries` the malformed entries of a message of several, each on its own;
`python -m common.dead_letters list|show|replay|purge QUEUE` (the operators' side, `store` and `__main__`)
inspects them, puts them back on their queue, or drops them."""
from common.dead_letters.headers import dead_letter_queue
from common.dead_letters.reject import dead_letter, dead_letter_entries

__all__ = ["dead_letter", "dead_letter_entries", "dead_letter_queue"]
