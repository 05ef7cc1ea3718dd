package reversehub;

import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

/** Checks of the parsing and framing without a server; run by tests/live/test_java.py, exits 1 on a failure. */
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
        check(new String(response.serialize(true), StandardCharsets.ISO_8859_1),
                "HTTP/1.1 299 Custom Reason\r\nX-A: 1\r\n\r\n");
        check(new String(new Response(204, "No Content", List.of(), new byte[] {1}).serialize(), StandardCharsets.ISO_8859_1),
                "HTTP/1.1 204 No Content\r\n\r\n");
        try {
            new Response(200, "", List.of(Map.entry("X-A", "1\r\nSet-Cookie: x=1")), null).serialize();
            fail("a header value with CRLF was serialized");
        } catch (IllegalArgumentException expected) {
            // refused, as it must be
        }
        if (failures > 0) {
            System.exit(1);
        }
        System.out.println("OK");
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
