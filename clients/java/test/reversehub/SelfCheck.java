package reversehub;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

/** Checks of the parsing and framing (long-poll and PTTH) without a server; run by tests/live/test_java.py, exits 1 on a failure. */
public final class SelfCheck {
    private static int failures;

    public static void main(String[] args) {
        URI base = URI.create("http://relay.example/reversehttp");
        // Several relations, one comma-joined line, bare and quoted rel, relative URLs.
        List<String> joined = List.of("</r/a>; rel=first, <http://relay.example/relay/x/>; rel=\"related alternate\"");
        check(Links.find(joined, "first", base), "http://relay.example/r/a");
        check(Links.find(joined, "related", base), "http://relay.example/relay/x/");
        check(Links.find(List.of("</r/b>; title=\"a, b\"; REL=\"Next\""), "next", base), "http://relay.example/r/b");
        check(Links.find(List.of("</r/c>; rel=previous"), "next", base), null);

        byte[] raw = "POST /relay/x/p?q=1 HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: v\r\nContent-Length: 3\r\n\r\nabcEXTRA"
                .getBytes(StandardCharsets.ISO_8859_1);
        Request request = Request.parse(raw);
        check(request.method, "POST");
        check(request.path(), "/relay/x/p");
        check(request.query(), "q=1");
        check(request.header("x-mixed-case"), "v");
        check(request.headers.get(1).getKey(), "X-Mixed-Case");
        check(new String(request.body, StandardCharsets.ISO_8859_1), "abc");
        rejects("GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort");
        rejects("GET / HTTP/1.1\r\nno colon\r\n\r\n");
        rejects("GET / HTTP/1.1\r\n");

        Response response = new Response(299, "Custom Reason", List.of(Map.entry("X-A", "1")), new byte[] {1, 2});
        check(new String(response.serialize(), StandardCharsets.ISO_8859_1),
                "HTTP/1.1 299 Custom Reason\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n\u0001\u0002");
        // HEAD answered like GET: the GET's Content-Length (RFC 9110 9.3.2), no body.
        check(new String(response.serialize(true), StandardCharsets.ISO_8859_1),
                "HTTP/1.1 299 Custom Reason\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n");
        check(new String(new Response(200, "OK", List.of(), null).serialize(true), StandardCharsets.ISO_8859_1),
                "HTTP/1.1 200 OK\r\n\r\n");
        check(new String(new Response(204, "No Content", List.of(), new byte[] {1}).serialize(), StandardCharsets.ISO_8859_1),
                "HTTP/1.1 204 No Content\r\n\r\n");
        try {
            new Response(200, "", List.of(Map.entry("X-A", "1\r\nSet-Cookie: x=1")), null).serialize();
            fail("a header value with CRLF was serialized");
        } catch (IllegalArgumentException expected) {
            // refused, as it must be
        }
        http1();
        if (failures > 0) {
            System.exit(1);
        }
        System.out.println("OK");
    }

    /** The PTTH connection's reader (Http1): framing, pipelining, and refusal of what it cannot frame. */
    private static void http1() {
        try {
            // Pipelined: Content-Length, chunked with an extension and a trailer, then a bodiless HEAD.
            InputStream in = stream("POST /relay/x/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                    + "PUT /relay/x/b?q HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Case: V\r\n\r\n"
                    + "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n"
                    + "HEAD /relay/x/c HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
            Request a = Http1.readRequest(in);
            check(a.method + " " + a.target + " " + new String(a.body, StandardCharsets.ISO_8859_1), "POST /relay/x/a hello");
            Request b = Http1.readRequest(in);
            check(b.method + " " + b.query() + " " + new String(b.body, StandardCharsets.ISO_8859_1), "PUT q abcde");
            check(b.headers.get(1).getKey(), "X-Case");
            Request c = Http1.readRequest(in);
            check(c.method + " " + c.body.length, "HEAD 0");
            check(Http1.readRequest(in), null); // closed between requests: the end, not an error
            check(Http1.readRequest(stream("GET / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok")).body.length, 2);
        } catch (IOException e) {
            fail("Http1 refused a valid request: " + e);
        }
        String big = "x".repeat(Http1.MAX_HEAD);
        String many = "X: 1\r\n".repeat(Http1.MAX_HEADERS + 1);
        for (String bad : List.of(
                "GET / HTTP/1.1\nHost: h\n\n", // bare LF
                "GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", // obs-fold
                "GET / HTTP/1.1\r\nHost : h\r\n\r\n", // space before the colon
                "GET / HTTP/1.1\r\nX: a\u0001b\r\n\r\n", // control character
                "GET  / HTTP/1.1\r\n\r\n", "GET / HTTP/2.0\r\n\r\n", "G(T / HTTP/1.1\r\n\r\n",
                "GET /\u00ff HTTP/1.1\r\n\r\n",
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + Integer.toHexString(Http1.MAX_BODY + 1) + "\r\n",
                "POST / HTTP/1.1\r\nContent-Length: " + (Http1.MAX_BODY + 1) + "\r\n\r\n",
                "POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort", // ends mid-body
                "GET / HTTP/1.1\r\nHost: h\r\n", // ends mid-head
                "GET /" + big + " HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\n" + many + "\r\n")) {
            try {
                Http1.readRequest(stream(bad));
                fail("Http1 read " + bad.substring(0, Math.min(bad.length(), 80)).replace("\r\n", "\\r\\n"));
            } catch (IOException expected) {
                // refused: the connection is closed
            }
        }
        try {
            InputStream in = stream("HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH\r\nALPN: http%2F1.1\r\n\r\nGET");
            Http1.Head head = Http1.readResponseHead(in);
            check(head.status() + " " + head.reason() + " " + Http1.lists(head.headers(), "upgrade", "ptth"),
                    "101 Switching Protocols true");
            check(new String(in.readAllBytes(), StandardCharsets.ISO_8859_1), "GET"); // the transposed stream's start
            in = stream("HTTP/1.1 204\r\nLink: </r/n>; rel=\"next\"\r\n\r\n");
            head = Http1.readResponseHead(in);
            check(head.status() + " " + Http1.readResponseBody(in, head).length + " " + Http1.values(head.headers(), "link"),
                    "204 0 [</r/n>; rel=\"next\"]");
            in = stream("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
            check(new String(Http1.readResponseBody(in, Http1.readResponseHead(in)), StandardCharsets.ISO_8859_1), "ok");
            in = stream("HTTP/1.0 200 OK\r\n\r\nuntil the end");
            check(new String(Http1.readResponseBody(in, Http1.readResponseHead(in)), StandardCharsets.ISO_8859_1),
                    "until the end");
        } catch (IOException e) {
            fail("Http1 refused a valid response: " + e);
        }
        for (String bad : List.of("HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 200OK\r\n\r\n", "ICY 200 OK\r\n\r\n")) {
            try {
                Http1.readResponseHead(stream(bad));
                fail("Http1 read the status line " + bad.strip());
            } catch (IOException expected) {
                // refused
            }
        }
        // A handler's framing headers cannot desynchronise a connection: a wrong length or a coding is refused.
        for (Map.Entry<String, String> header : List.of(Map.entry("Content-Length", "5"), Map.entry("Transfer-Encoding", "chunked"))) {
            try {
                new Response(200, "OK", List.of(header), new byte[] {1}).serialize();
                fail("serialized a response with " + header);
            } catch (IllegalArgumentException expected) {
                // refused: the handler's 500
            }
        }
        check(new String(new Response(200, "", List.of(Map.entry("content-length", "9")), null).serialize(true),
                StandardCharsets.ISO_8859_1), "HTTP/1.1 200 \r\ncontent-length: 9\r\n\r\n");
    }

    private static InputStream stream(String text) {
        return new ByteArrayInputStream(text.getBytes(StandardCharsets.ISO_8859_1));
    }

    private static void rejects(String message) {
        try {
            Request.parse(message.getBytes(StandardCharsets.ISO_8859_1));
            fail("parsed " + message.replace("\r\n", "\\r\\n"));
        } catch (IllegalArgumentException expected) {
            // refused, as it must be
        }
    }

    private static void check(Object got, Object want) {
        if (got == null ? want != null : !got.equals(want)) {
            fail("got " + got + ", want " + want);
        }
    }

    private static void fail(String message) {
        failures++;
        System.out.println("FAIL " + message);
    }
}
