"""`python -m ops.dead_letters list|show|replay|purge QUEUE [--id ID ...] [--all] [--dry-run] [--yes]`

    list     id, age, deaths and reason of each dead letter of QUEUE (all, or those of --id)
    show     the whole messages (properties, headers, body) as JSON lines
    replay   put the chosen ones (--id / --all) back on QUEUE, confirmed, then drop them from QUEUE.dead
    purge    drop the chosen ones for good; asks first unless --yes

RABBITMQ_URL comes from the settings (environment over `.env`); a comma-separated list of a cluster's nodes
is tried in order. Replayed messages are published as its user: run the command as BROKER_OPERATOR_USER, whose
messages the services take (docs/security-credentials.md). A dead letter refused for its publisher (a user the
queue takes nothing from; possibly forged) is never replayed: `--all` leaves it, `--id` naming it is bad input.
Exit status: 0 done, 1 not done (broker unreachable, .dead not readable by this user, a replay not confirmed, purge
declined), 2 bad input (unknown queue or id, missing --id/--all, --id naming a letter refused for its publisher):
nothing changed."""
import argparse
import asyncio
import base64
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from common.broker.dead_letter_headers import utc_now
from common.runtime.config import load_settings
from ops.dead_letters.store import AccessRefused, DeadLetter, DeadLetterQueue, UnknownQueue, Unreachable

BAD_INPUT, NOT_DONE = 2, 1


class BadSelection(Exception):
    """--id names a message that is not there, or a command that changes things got no selection."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ops.dead_letters", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("list", "show", "replay", "purge"))
    parser.add_argument("queue", help="the queue whose dead letters to handle, e.g. outbox_os")
    parser.add_argument("--id", action="append", dest="ids", metavar="ID", help="a message id (repeatable)")
    parser.add_argument("--all", action="store_true", help="every dead letter of the queue")
    parser.add_argument("--dry-run", action="store_true", help="say what replay/purge would do; change nothing")
    parser.add_argument("--yes", action="store_true", help="purge without asking")
    args = parser.parse_args(argv)
    if args.ids and args.all:
        parser.error("give --id or --all, not both")
    return args


def choose(letters: list[DeadLetter], args: argparse.Namespace) -> list[DeadLetter]:
    """The letters the command acts on; raises `BadSelection`."""
    if args.ids:
        missing = sorted(set(args.ids) - {letter.id for letter in letters})
        if missing:
            raise BadSelection(f"no dead letter with id {', '.join(missing)} in {args.queue}.dead")
        return [letter for letter in letters if letter.id in args.ids]
    if args.command in ("replay", "purge") and not args.all:
        raise BadSelection(f"{args.command} needs --id ID or --all")
    return letters


def check_replayable(letters: list[DeadLetter], args: argparse.Namespace) -> None:
    """Raises `BadSelection` if --id names a letter refused for its publisher, which `replay` never vouches for."""
    refused = [letter for letter in letters if letter.info.refused_publisher is not None]
    if refused and args.ids:
        raise BadSelection(f"{', '.join(letter.id or '-' for letter in refused)} was refused for its publisher "
                           f"(user_id {refused[0].info.refused_publisher!r}) and may be forged: it is never "
                           "replayed; purge it")


def age(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "?"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def print_list(letters: list[DeadLetter], queue: str) -> None:
    now = utc_now()
    print(f"{'ID':<24} {'AGE':>6} {'DEATHS':>6}  REASON")
    for letter in letters:
        info = letter.info
        first = f" (first: {info.first_reason}, {age(info.first_rejected_at, now)} ago)" \
            if info.deaths > 1 else ""
        print(f"{letter.id or '-':<24} {age(info.rejected_at, now):>6} {info.deaths:>6}  {info.reason}{first}")
    print(f"{len(letters)} dead letter(s) in {queue}.dead")


def print_show(letters: list[DeadLetter]) -> None:
    for letter in letters:
        message = letter.message
        shown: dict[str, Any] = {"message_id": message.message_id, "properties": {
            "content_type": message.content_type, "delivery_mode": int(message.delivery_mode or 0),
            "correlation_id": message.correlation_id, "timestamp": message.timestamp, "type": message.type,
            "app_id": message.app_id, "user_id": message.user_id}, "headers": message.headers or {}}
        try:
            shown["body"] = message.body.decode()
        except UnicodeDecodeError:
            shown["body_base64"] = base64.b64encode(message.body).decode()
        print(json.dumps(shown, default=str, sort_keys=True))


def confirmed_by_user(count: int, queue: str) -> bool:
    try:
        answer = input(f"Drop {count} dead letter(s) from {queue}.dead for good? [y/N] ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


async def replay(dlq: DeadLetterQueue, letters: list[DeadLetter], dry_run: bool) -> int:
    for letter in letters:
        if letter.info.refused_publisher is not None:
            print(f"left {letter.id}: refused for its publisher (user_id {letter.info.refused_publisher!r}), never "
                  "replayed", file=sys.stderr)
            continue
        if dry_run:
            print(f"would replay {letter.id} to {dlq.queue}")
            continue
        try:
            await dlq.replay(letter)
        except Exception as exc:  # noqa: BLE001 - reported; the letter stays in the dead-letter queue
            print(f"replay of {letter.id} not confirmed ({exc!r}); it stays in {dlq.queue}.dead", file=sys.stderr)
            return NOT_DONE
        print(f"replayed {letter.id} to {dlq.queue}")
    return 0


async def purge(dlq: DeadLetterQueue, letters: list[DeadLetter], args: argparse.Namespace) -> int:
    if args.dry_run:
        for letter in letters:
            print(f"would drop {letter.id} from {args.queue}.dead")
        return 0
    if not args.yes and not confirmed_by_user(len(letters), args.queue):
        print("Nothing dropped.")
        return NOT_DONE
    for letter in letters:
        await dlq.remove(letter)
    print(f"dropped {len(letters)} dead letter(s) from {args.queue}.dead")
    return 0


async def run(args: argparse.Namespace, rabbitmq_url: str) -> int:
    dlq = await DeadLetterQueue.open(rabbitmq_url, args.queue)
    try:
        letters = choose(await dlq.take_all(), args)
        if args.command == "list":
            print_list(letters, args.queue)
        elif args.command == "show":
            print_show(letters)
        elif args.command == "replay":
            check_replayable(letters, args)
            return await replay(dlq, letters, args.dry_run)
        else:
            return await purge(dlq, letters, args)
        return 0
    finally:
        await dlq.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args, load_settings().rabbitmq_url))
    except (UnknownQueue, BadSelection) as exc:
        print(f"error: {exc}; nothing changed", file=sys.stderr)
        return BAD_INPUT
    except (Unreachable, AccessRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return NOT_DONE


if __name__ == "__main__":
    sys.exit(main())
