package reversehub;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/** A handler's answer, sent back to the relay as {@code message/http}. */
public final class Response {
    public final int status;
    public final String reason;
    public final List<Map.Entry<String, String>> headers;
    public final byte[] body;

    public Response(int status, String reason, List<Map.Entry<String, String>> headers, byte[] body) {
        if (status < 100 || status > 999) {
            throw new IllegalArgumentException("status must have three digits");
        }
        this.status = status;
        this.reason = reason == null ? "" : reason;
        this.headers = List.copyOf(headers);
        this.body = body == null ? new byte[0] : body;
    }

    /** A text/plain response (UTF-8). */
    public static Response text(int status, String text) {
        return new Response(
                status, "", List.of(Map.entry("Content-Type", "text/plain; charset=utf-8")),
                text.getBytes(StandardCharsets.UTF_8));
    }

    /**
     * The {@code message/http} form; Content-Length is added unless the handler gave one (which must
     * be the body's length). Transfer-Encoding is refused: the body is always sent whole.
     */
    public byte[] serialize() {
        return serialize(false);
    }

    /**
     * The {@code message/http} form of the answer to a HEAD request ({@code toHead}) or not. Replies to
     * HEAD and 1xx, 204 and 304 replies have no body (RFC 9112 6.3), so none is written, and no
     * Content-Length is made up for them (204 must not have one, RFC 9110 8.6), except that a HEAD
     * answered with the body a GET would get says that body's length, as a GET's answer would (RFC
     * 9110 9.3.2): a recipient then frames the reply by its length, not by its method alone.
     */
    public byte[] serialize(boolean toHead) {
        boolean bodiless = toHead || status < 200 || status == 204 || status == 304;
        StringBuilder head = new StringBuilder();
        head.append("HTTP/1.1 ").append(status).append(' ').append(reason).append("\r\n");
        List<Map.Entry<String, String>> lines = new ArrayList<>(headers);
        boolean hasLength = false;
        for (Map.Entry<String, String> h : lines) {
            String name = h.getKey();
            String value = h.getValue();
            // CR or LF in a name or value would let a handler's data forge header lines.
            if (name.isEmpty() || name.matches(".*[\\s:].*") || value.matches("(?s).*[\\r\\n\\x00].*")) {
                throw new IllegalArgumentException("header with a control character, blank or colon: " + name);
            }
            if (name.equalsIgnoreCase("content-length")) {
                // The body is written as it is, so a length that is not its length would misframe it,
                // and on a PTTH connection make the relay read our next response as this one's rest.
                if (!bodiless && !value.strip().equals(String.valueOf(body.length))) {
                    throw new IllegalArgumentException("Content-Length " + value + " for a body of " + body.length + " bytes");
                }
                hasLength = true;
            }
            if (name.equalsIgnoreCase("transfer-encoding")) {
                throw new IllegalArgumentException("Transfer-Encoding: the body is sent whole, with Content-Length");
            }
            head.append(name).append(": ").append(value).append("\r\n");
        }
        boolean headOfGet = toHead && status >= 200 && status != 204 && status != 304 && body.length > 0;
        if (!hasLength && (!bodiless || headOfGet)) {
            head.append("Content-Length: ").append(body.length).append("\r\n");
        }
        head.append("\r\n");
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.writeBytes(head.toString().getBytes(StandardCharsets.ISO_8859_1));
        if (!bodiless) {
            out.writeBytes(body);
        }
        return out.toByteArray();
    }
}
