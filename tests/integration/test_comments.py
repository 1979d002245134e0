"""
Comments and reactions through the real tiers: posted at one PoP (the
``all`` role's), batched there, passed through the origin to the encoder,
and read back as each second's document through another PoP's caches,
within 2 s; a flood of posts from many viewers costs the data center one
request a second per PoP process, and every document one fetch per tier.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from io import BytesIO

import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.web.client import Agent, FileBodyProducer, readBody

from .conftest import sleep
from .test_twistd import all_role_process, wait_for_ok
from .topology import Node, origin_pop_args

SECONDS = 6
FLOOD = 60  # viewers, each of its own address


@defer.inlineCallbacks
def post(base, kind, body, source="127.0.0.1"):
    agent = Agent(reactor, bindAddress=(source, 0))
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = yield agent.request(b"POST", ("%s/api/v1/live_videos/demo/%s" % (base, kind)).encode(), None,
                                   FileBodyProducer(BytesIO(raw)))
    answer = yield readBody(response)
    return response, json.loads(answer or b"{}")


@defer.inlineCallbacks
def document(base, second):
    response = yield treq.get("%s/live/demo/comments/%d.json" % (base, second))
    body = yield response.content()
    return response.code, (json.loads(body) if response.code == 200 else None)


@pytest_twisted.inlineCallbacks
def test_a_comment_posted_at_one_pop_reaches_a_viewer_at_another_and_a_flood_costs_one_request_a_second(tmp_path):
    pop2 = Node("pop2", "pop", [], str(tmp_path))
    try:
        with all_role_process(tmp_path) as (ports, log):
            pop1 = "http://127.0.0.1:%d" % (ports["pop"],)
            pop2.args = origin_pop_args("pop2", ports["origin"])
            pop2.start()
            other = "http://127.0.0.1:%d" % (pop2.http,)
            for base in (pop1, other):
                code = yield wait_for_ok(base + "/live/demo/manifest.mpd", 40)
                assert code == 200, log.read_text()[-3000:]

            # One comment, HTML and all, posted at pop1; read at pop2.
            posted = time.time()
            response, answer = yield post(pop1, "comments", {"text": "<b>hello</b> <script>x()</script>",
                                                             "name": "ann"})
            assert response.code == 202 and answer == {"accepted": True}
            found, second = None, int(posted)
            while found is None and time.time() < posted + 5:
                code, doc = yield document(other, second)  # held by the encoder until the second is over
                if code == 200:
                    found = next((c for c in doc["comments"] if c["name"] == "ann"), None)
                    second += 1
                else:
                    yield sleep(0.1)
            delivered = time.time() - posted
            print("a comment from pop1 read at pop2 after %.2f s" % (delivered,))
            assert found is not None and found["text"] == "<b>hello</b> <script>x()</script>", log.read_text()[-3000:]
            assert delivered < 2.0

            # Hostile posts get clear errors, and other viewers post on.
            codes = []
            for _ in range(5):
                codes.append((yield post(pop1, "comments", {"text": "again"}, "127.0.3.1"))[0].code)
            assert codes[:3] == [202, 202, 202] and 429 in codes, codes
            response, answer = yield post(pop1, "comments", {"text": "x" * 501}, "127.0.3.2")
            assert response.code == 413 and "500" in answer["error"]
            assert (yield post(pop1, "comments", b"x" * 5000, "127.0.3.3"))[0].code == 413
            assert (yield post(pop1, "reactions", {"reaction": "boo"}, "127.0.3.4"))[0].code == 400
            assert (yield post(pop1, "comments", {"text": "still here"}, "127.0.3.5"))[0].code == 202

            # The flood: every viewer reacts about three times a second and
            # reads each second's document at its PoP.
            first = int(time.time()) + 1
            reactions: Counter[str] = Counter()

            @defer.inlineCallbacks
            def viewer(i):
                base = pop1 if i % 2 else other
                source = "127.0.4.%d" % (i + 1,)
                end = time.time() + SECONDS
                while time.time() < end:
                    if (yield post(pop1, "reactions", {"reaction": "like"}, source))[0].code == 202:
                        reactions["like"] += 1
                    yield sleep(0.3)
                for n in range(first, first + SECONDS - 1):
                    code, _ = yield document(base, n)
                    assert code == 200

            yield defer.gatherResults([viewer(i) for i in range(FLOOD)], consumeErrors=True)
            yield sleep(2.5)
            counted = 0
            for n in range(first - 1, int(time.time())):
                code, doc = yield document(pop1, n)
                counted += doc["reactions"].get("like", 0) if code == 200 else 0
            assert counted == reactions["like"], (counted, reactions)
    finally:
        pop2.kill()
    text = "".join(path.read_text() for path in tmp_path.glob("twistd.log*"))
    # What the origin passed to the encoder: a batch a second at most from
    # each PoP process, whatever the flood (pop1's workers each send their own).
    batches = re.findall(r'"POST /live/demo/posts HTTP/1.1" 202 \d+ "-" "fbstream-cache \(origin\)"', text)
    assert 0 < len(batches) <= 2 * (SECONDS + 4), len(batches)
    # Each second's document: one fetch from the encoder, however many read
    # it, and one from the origin per PoP (pop1's and pop2's cache layers).
    fetched = Counter(re.findall(r'"GET (/live/demo/comments/\d+\.json) HTTP/1.1" 200 \d+ "-" '
                                 r'"fbstream-cache \(([\w-]+)\)"', text))
    assert {n for (_, tier), n in fetched.items() if tier == "origin"} == {1}, fetched.most_common(5)
    assert max(n for (_, tier), n in fetched.items() if tier == "pop-cache") <= 2, fetched.most_common(5)
