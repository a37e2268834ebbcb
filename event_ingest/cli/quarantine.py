"""``event-ingest quarantine list|show|requeue|discard``: what was kept, and what to do with it.

Each command raises when it cannot do its work (a refusal, a failed requeue, a store error); ``main`` maps
what was raised to an exit code and one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ..config import SourceConfig, database_url, load_sources, redis_url
from ..exits import EXIT_OK
from .errors import CliError
from .rendering import discarded_line, item_dict, print_item, print_items
from .services import open_reader, open_store

if TYPE_CHECKING:
    from ..core import Store
    from ..core.store import QuarantineItem


def existing_item(store: Store, item_id: int) -> QuarantineItem:
    item = store.quarantine_item(item_id)
    if item is None:
        raise CliError(f"event-ingest: quarantine item {item_id} does not exist")
    return item


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    with open_reader(database_url()) as store:
        items, total = store.quarantine_items(args.source, include_resolved=args.all, limit=args.limit)
    if args.json:
        print(json.dumps([item_dict(i) for i in items]))
    else:
        print_items(items, total, args.source, include_resolved=args.all)
    return EXIT_OK


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    from ..core.quarantine import escape_bytes

    with open_reader(database_url()) as store:
        item = existing_item(store, args.id)
    if args.raw:
        sys.stdout.buffer.write(item.raw or b"")  # exactly as kept: for a file or a pipe, not a terminal
        sys.stdout.flush()
    elif args.json:
        print(json.dumps({**item_dict(item), "raw_escaped": escape_bytes(item.raw or b"")}))
    else:
        print_item(item, args.max_bytes)
    return EXIT_OK


def cmd_quarantine_requeue(args: argparse.Namespace) -> int:
    from ..core import connect_redis
    from ..core.quarantine import requeue

    fixed = None
    if args.from_file:
        try:
            with open(args.from_file, "rb") as f:
                fixed = f.read()
        except OSError as exc:
            raise CliError(
                f"event-ingest: {args.from_file}: cannot read the corrected item: {exc.strerror or exc}"
            ) from None
    url, redis_address = database_url(), redis_url()
    configured = {s.name: s for s in load_sources(args.sources)}
    redis_client = connect_redis(redis_address)
    try:
        with open_store(url) as store:
            item = existing_item(store, args.id)
            # The source's payload cap as the sources file sets it (a removed source: the default cap).
            cap = (configured[item.source] if item.source in configured else SourceConfig).max_payload_bytes
            result = requeue(
                store,
                redis_client,
                args.id,
                max_payload_bytes=cap,
                fixed=fixed,
                from_file=args.from_file,
                lease_wait_s=args.lease_wait,
            )
    finally:
        redis_client.close()
    print(json.dumps(result.__dict__) if args.json else result.summary(), flush=True)
    return EXIT_OK


def cmd_quarantine_discard(args: argparse.Namespace) -> int:
    from ..core.quarantine import discard

    with open_store(database_url()) as store:
        item = discard(store, args.id)
    print(json.dumps(item_dict(item)) if args.json else discarded_line(item))
    return EXIT_OK
