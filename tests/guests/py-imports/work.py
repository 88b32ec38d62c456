"""What both Python import guests answer, and the libraries it needs.

`py-imports` imports this module at its top, so componentize-py loads it,
and everything it imports, once at build time and snapshots the result:
a fresh instance starts with it loaded. `py-imports-lazy` imports it on its
first request (from source text kept in its snapshot), so every fresh
instance loads it again. The answer is the
same; the difference is what loading libraries costs per instance.
"""

import dataclasses
import decimal
import difflib
import email.parser
import email.policy
import json
import statistics
import urllib.parse

from componentize_py_types import Ok
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

MESSAGE = "From: a@example.com\nSubject: totals\n\n1.10 2.20 3.30 4.40\n"

# Requests this instance has served: 1 in every answer of a fresh instance,
# whether the module was loaded at build time or by the request.
served = 0


@dataclasses.dataclass
class Totals:
    subject: str
    total: str
    mean: float
    close: list
    query: dict
    served: int


def answer(query: str) -> bytes:
    global served
    served += 1
    message = email.parser.Parser(policy=email.policy.default).parsestr(MESSAGE)
    values = [decimal.Decimal(v) for v in message.get_content().split()]
    totals = Totals(
        subject=str(message["subject"]),
        total=str(sum(values)),
        mean=statistics.fmean(float(v) for v in values),
        close=difflib.get_close_matches("totl", ["total", "mean", "subject"]),
        query=urllib.parse.parse_qs(query),
        served=served,
    )
    return (json.dumps(dataclasses.asdict(totals), sort_keys=True) + "\n").encode()


def handle(request: IncomingRequest, response_out: ResponseOutparam) -> None:
    path = request.path_with_query() or "/"
    body = answer(path.partition("?")[2])
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    response.set_status_code(200)
    outgoing = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    # The stream must be dropped (end of `with`) before the body is finished.
    with outgoing.write() as stream:
        stream.blocking_write_and_flush(body)
    OutgoingBody.finish(outgoing, None)
