"""`proxy.response.ResponseParser`, the gateway's reading of its backends' responses, fuzzed with hypothesis:
well-formed responses (sized, chunked with extensions and trailers, ended by the connection's close) parse to the
same status, headers and body however the reads split them, at every byte; bad Content-Lengths, bad chunk framing
and arbitrary bytes are a `MalformedResponse` and nothing else, wherever the bytes are cut. The parser does no
I/O: each split is fed exactly, and one real socket check sees `KeepAliveClient` read a response sent a byte at a
time."""
import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http_client import KeepAliveClient
from proxy.response import MalformedResponse, ResponseParser

MAX_BODY = 2048
fuzzing = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(lambda name: "X-" + name)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
CODES = st.sampled_from([200, 201, 204, 299, 304, 400, 404, 409, 418, 503])


def pieces(data, cuts):
    """`data` cut at the offsets `cuts`."""
    edges = [0, *sorted(set(cuts)), len(data)]
    return [data[start:end] for start, end in zip(edges, edges[1:])]


def parse(pieces_, eof=False, no_body=False):
    """(response or None, parser) after feeding `pieces_` one by one (and the connection's end, if `eof`)."""
    parser = ResponseParser(MAX_BODY, no_body=no_body)
    response = None
    for piece in pieces_:
        response = parser.feed(piece)
    if eof and response is None:
        response = parser.feed_eof()
    return response, parser


@st.composite
def responses(draw):
    """(bytes on the wire, expected code, expected headers, expected body, reusable, ends at the connection's close)."""
    code = draw(CODES)
    headers = draw(st.dictionaries(TOKEN, VALUE, max_size=4))
    body = b"" if code in (204, 304) else draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    closes = draw(st.booleans())
    lines = [f"HTTP/1.1 {code} {draw(st.sampled_from(['OK', 'Whatever', '']))}",  # the space stays (RFC 9112 4)
             *(f"{name}:{draw(st.sampled_from(['', ' ', '  ']))}{value}" for name, value in headers.items())]
    if closes:
        lines.append("Connection: close")
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        payload = chunked(draw, body)
    else:
        payload = body
    if code in (204, 304):
        payload = b""  # whatever the head says of a body, these have none
    newline = draw(st.sampled_from(["\r\n", "\n"]))  # bare LFs end a head's lines too (as Tornado reads them)
    wire = (newline.join(lines) + newline * 2).encode("latin1") + payload
    no_length = framing == "close" and code not in (204, 304)
    return wire, code, headers, body, not (closes or no_length), no_length


def chunked(draw, body):
    """`body` in chunks of random sizes (hex in either case, with and without extensions), the last chunk, and
    perhaps trailer fields."""
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=5))
    out = b""
    for chunk in (piece for piece in pieces(body, cuts) if piece):
        size = draw(st.sampled_from(["%x", "%X", "%04x"])) % len(chunk)
        extension = draw(st.sampled_from(["", ";name=value", ";a;b=c"]))
        out += f"{size}{extension}\r\n".encode() + chunk + b"\r\n"
    trailers = draw(st.sampled_from(["", "X-Checksum: 1\r\n", "A: 1\r\nB: 2\r\n"]))
    return out + b"0\r\n" + trailers.encode() + b"\r\n"


def assert_parsed(response, parser, code, headers, body, reusable):
    assert (response.code, response.body, parser.reusable) == (code, body, reusable)
    assert {name: response.headers.get(name) for name in headers} == headers


@fuzzing
@given(responses())
def test_a_response_parses_the_same_cut_at_any_byte_and_byte_by_byte(case):
    wire, code, headers, body, reusable, ends_at_close = case
    splits = [pieces(wire, [cut]) for cut in range(len(wire) + 1)] + [pieces(wire, range(len(wire)))]
    for cut in splits:
        response, parser = parse(cut, eof=ends_at_close)
        assert_parsed(response, parser, code, headers, body, reusable)


@fuzzing
@given(responses(), st.lists(st.integers(0, 2000), max_size=20))
def test_a_response_is_complete_only_once_its_last_byte_arrived(case, cuts):
    wire, code, headers, body, reusable, ends_at_close = case
    parser = ResponseParser(MAX_BODY)
    fed = pieces(wire, [cut for cut in cuts if cut < len(wire)])
    for piece in fed[:-1]:
        assert parser.feed(piece) is None
    response = parser.feed(fed[-1])
    if ends_at_close:
        assert response is None  # the body runs until the connection ends
        response = parser.feed_eof()
    assert_parsed(response, parser, code, headers, body, reusable)


@fuzzing
@given(responses(), st.binary(min_size=1, max_size=20))
def test_bytes_beyond_the_response_keep_its_connection_from_being_used_again(case, extra):
    wire, code, headers, body, _, ends_at_close = case
    if ends_at_close:
        return  # what follows is its body
    response, parser = parse([wire + extra])
    assert (response.code, response.body, parser.reusable) == (code, body, False)


@fuzzing
@given(responses())
def test_a_connection_that_ends_early_is_a_malformed_response(case):
    wire, *_, ends_at_close = case
    if ends_at_close:
        return
    for cut in range(len(wire)):
        with pytest.raises(MalformedResponse):
            parse([wire[:cut]], eof=True)


BAD_LENGTHS = st.one_of(
    st.sampled_from(["", "-1", "+5", "0x10", "1_0", "5 5", "1e3", "²", "½", "٣".encode().decode("latin1"), "five",
                     "5, 6", "5,", ",5"]),
    st.integers(0, 999).map(lambda n: f"{n}x"),
    st.integers(0, 999).map(lambda n: f"-{n}"),
    st.integers(0, 999).map(lambda n: f"{n}, {n + 1}"),
    st.integers(0, 99).flatmap(lambda n: st.sampled_from([f"{n}.0", f"{n} {n}", f"0x{n}", f"+{n}"])),
)


@fuzzing
@given(BAD_LENGTHS, st.binary(max_size=50), st.lists(st.integers(0, 200), max_size=6))
def test_a_content_length_that_is_not_digits_alone_is_malformed_wherever_the_reads_cut(value, body, cuts):
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: " + value.encode("latin1") + b"\r\n\r\n" + body
    with pytest.raises(MalformedResponse, match="Content-Length"):
        parse(pieces(wire, [cut for cut in cuts if cut < len(wire)]), eof=True)


@pytest.mark.parametrize("value, body", [("5, 5", b"12345"), (" 7", b"1234567"), ("0", b""), ("007", b"1234567")])
def test_a_content_length_repeated_with_one_value_or_padded_is_that_value(value, body):
    response, parser = parse([f"HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n".encode() + body])
    assert (response.body, parser.reusable) == (body, True)


@pytest.mark.parametrize("head", [
    "Content-Length: 3\r\nTransfer-Encoding: chunked",  # either could frame it: a smuggling attempt
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: identity",
    f"Content-Length: {MAX_BODY + 1}",
])
def test_framing_the_gateway_does_not_take_is_malformed(head):
    with pytest.raises(MalformedResponse):
        parse([f"HTTP/1.1 200 OK\r\n{head}\r\n\r\n3\r\nabc\r\n0\r\n\r\n".encode()])


BAD_SIZES = st.sampled_from(["", "g", "+1", "-1", "0x1", "1_0", " ", "1 2", "z;ext", "٣".encode().decode("latin1")])


@fuzzing
@given(BAD_SIZES, st.lists(st.integers(0, 100), max_size=6))
def test_a_chunk_size_that_is_not_hex_digits_is_malformed(size, cuts):
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size.encode("latin1") + b"\r\nabc\r\n0\r\n\r\n"
    with pytest.raises(MalformedResponse, match="chunk size"):
        parse(pieces(wire, [cut for cut in cuts if cut < len(wire)]), eof=True)


@fuzzing
@given(st.integers(1, 20), st.text("abcxyz019;", min_size=1, max_size=30).map(str.encode),
       st.lists(st.integers(0, 100), max_size=6))
def test_a_chunk_longer_or_shorter_than_its_size_is_malformed(size, data, cuts):
    """The data has no CR or LF: else the rest of the body could happen to frame chunks of its own."""
    if len(data) == size:
        data += b"x"
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (size, data)
    with pytest.raises(MalformedResponse):
        parse(pieces(wire, [cut for cut in cuts if cut < len(wire)]), eof=True)


@fuzzing
@given(st.binary(min_size=2, max_size=2).filter(lambda pair: pair != b"\r\n"), st.lists(st.integers(0, 60), max_size=6))
def test_a_chunk_followed_by_anything_but_crlf_is_malformed_even_if_the_rest_frames_well(after, cuts):
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc" + after + b"0\r\n\r\n"
    with pytest.raises(MalformedResponse):
        parse(pieces(wire, [cut for cut in cuts if cut < len(wire)]), eof=True)


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_body_over_the_limit_is_malformed_before_it_is_all_read(framing):
    head = {"length": f"Content-Length: {MAX_BODY + 1}\r\n", "chunked": "Transfer-Encoding: chunked\r\n",
            "close": ""}[framing]
    body = b"x" * (MAX_BODY + 1)
    if framing == "chunked":
        body = b"%x\r\n%s\r\n" % (len(body), body)
    with pytest.raises(MalformedResponse, match="limit"):
        parse([f"HTTP/1.1 200 OK\r\n{head}\r\n".encode(), body])  # no eof: the limit, not the end, refuses it


def test_a_head_response_has_its_get_s_headers_and_no_body():
    response, parser = parse([b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"], no_body=True)
    assert (response.body, response.headers["Content-Length"], parser.reusable) == (b"", "12", True)


def test_an_http_1_0_response_is_not_kept():
    response, parser = parse([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert (response.body, parser.reusable) == (b"ok", False)


@fuzzing
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=8), st.booleans())
def test_arbitrary_bytes_are_a_response_more_to_read_or_malformed_and_nothing_else(data, cuts, status_line):
    wire = (b"HTTP/1.1 200 OK\r\n" if status_line else b"") + data
    try:
        parse(pieces(wire, [cut for cut in cuts if cut < len(wire)]), eof=True)
    except MalformedResponse:
        pass


def test_a_head_over_the_limit_is_malformed_without_waiting_for_its_end():
    with pytest.raises(MalformedResponse, match="head over"):
        parse([b"HTTP/1.1 200 OK\r\n", b"X-Long: " + b"x" * 70000])


@pytest.mark.gen_test(timeout=20)
async def test_the_client_reads_a_response_sent_a_byte_at_a_time_and_keeps_the_connection():
    response = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nEtag: \"e\"\r\n\r\n"
                b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    connections = []

    async def serve(reader, writer):
        connections.append(asyncio.current_task())
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                for byte in response:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.001)  # each byte its own segment, read on its own
        except asyncio.IncompleteReadError:
            writer.close()  # the client closed the connection

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = KeepAliveClient(pool_size=1)
    try:
        for _ in range(2):
            answer = await client.fetch(f"http://127.0.0.1:{port}/orders/1")
            assert (answer.code, answer.headers["Etag"], answer.body) == (200, '"e"', b"abcde")
        assert len(connections) == 1  # the second request went on the kept connection
    finally:
        client.close()
        server.close()
        for serving in connections:
            serving.cancel()
        await asyncio.gather(*connections, return_exceptions=True)


@pytest.mark.gen_test
@pytest.mark.parametrize("url", ["https://127.0.0.1/orders", "http:///orders", "127.0.0.1:8081/orders"])
async def test_a_url_the_client_cannot_reach_in_plain_http_is_refused_by_name(url):
    client = KeepAliveClient()
    with pytest.raises(ValueError, match="not an http:// URL with a host"):
        await client.fetch(url)
