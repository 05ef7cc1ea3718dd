package reversehub;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/** A request the relay delivered, parsed from its {@code message/http} form (RFC 9112 framing). */
public final class Request {
    public final String method;
    public final String target;
    public final String version;
    /** Header lines in the order the relay sent them, names as sent. */
    public final List<Map.Entry<String, String>> headers;
    public final byte[] body;

    public Request(String method, String target, String version, List<Map.Entry<String, String>> headers, byte[] body) {
        this.method = method;
        this.target = target;
        this.version = version;
        this.headers = List.copyOf(headers);
        this.body = body;
    }

    /** The first value of header {@code name} (looked up case-insensitively, RFC 9110 5.1), or null. */
    public String header(String name) {
        for (Map.Entry<String, String> h : headers) {
            if (h.getKey().equalsIgnoreCase(name)) {
                return h.getValue();
            }
        }
        return null;
    }

    /** The target's path (without the query). */
    public String path() {
        int q = target.indexOf('?');
        return q < 0 ? target : target.substring(0, q);
    }

    /** The target's query string (without '?'), or "" when there is none. */
    public String query() {
        int q = target.indexOf('?');
        return q < 0 ? "" : target.substring(q + 1);
    }

    /** Parses {@code message/http}: request line, header lines, then a body of Content-Length bytes. */
    public static Request parse(byte[] raw) {
        int end = indexOf(raw, new byte[] {'\r', '\n', '\r', '\n'});
        if (end < 0) {
            throw new IllegalArgumentException("message/http without the blank line after the headers");
        }
        // Header bytes are ISO-8859-1 (RFC 9110 5.5): any octet maps to one char and back.
        String head = new String(raw, 0, end, StandardCharsets.ISO_8859_1);
        String[] lines = head.split("\r\n");
        String[] start = lines[0].split(" ");
        if (start.length != 3) {
            throw new IllegalArgumentException("bad request line");
        }
        List<Map.Entry<String, String>> headers = new ArrayList<>();
        for (int i = 1; i < lines.length; i++) {
            int colon = lines[i].indexOf(':');
            if (colon <= 0) {
                throw new IllegalArgumentException("bad header line");
            }
            headers.add(Map.entry(lines[i].substring(0, colon), lines[i].substring(colon + 1).strip()));
        }
        int from = end + 4;
        int length = raw.length - from;
        for (Map.Entry<String, String> h : headers) {
            if (h.getKey().equalsIgnoreCase("content-length")) {
                length = Integer.parseInt(h.getValue().strip());
                if (length < 0 || length > raw.length - from) {
                    throw new IllegalArgumentException("body shorter than Content-Length");
                }
            }
        }
        byte[] body = new byte[length];
        System.arraycopy(raw, from, body, 0, length);
        return new Request(start[0], start[1], start[2], headers, body);
    }

    static int indexOf(byte[] data, byte[] pattern) {
        outer:
        for (int i = 0; i + pattern.length <= data.length; i++) {
            for (int j = 0; j < pattern.length; j++) {
                if (data[i + j] != pattern[j]) {
                    continue outer;
                }
            }
            return i;
        }
        return -1;
    }
}
