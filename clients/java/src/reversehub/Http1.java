package reversehub;

import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.net.ProtocolException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * A strict reader of HTTP/1.1 messages from a byte stream (RFC 9112), for a PTTH connection, where
 * the relay writes requests to us on a socket the JDK's HTTP client cannot take over.
 *
 * <p>Anything it cannot frame with certainty is a {@link ProtocolException}, and the caller closes the
 * connection: on a connection that carries several messages, a guess at where one ends is how request
 * smuggling starts (RFC 9112 6.3, 11.2). The head, the number of header lines and the body are bounded,
 * so a peer cannot make us hold more than {@link #MAX_HEAD} plus {@link #MAX_BODY} bytes per message.
 */
final class Http1 {
    /** Request or status line, header and trailer lines together, CRLFs included. */
    static final int MAX_HEAD = 128 * 1024;
    static final int MAX_HEADERS = 256;
    static final int MAX_BODY = 32 * 1024 * 1024;

    // RFC 9110 5.6.2: token = 1*tchar.
    private static final Pattern TOKEN = Pattern.compile("[!#$%&'*+\\-.^_`|~0-9A-Za-z]+");
    // RFC 9112 3.2: the request target is visible ASCII, no spaces.
    private static final Pattern TARGET = Pattern.compile("[\\x21-\\x7e]+");
    private static final Pattern VERSION = Pattern.compile("HTTP/1\\.[01]");
    private static final Pattern DIGITS = Pattern.compile("[0-9]{1,18}");
    private static final Pattern CHUNK_SIZE = Pattern.compile("([0-9A-Fa-f]{1,16})[ \\t]*(;.*)?");

    private Http1() {}

    /** A status line and its header lines, names as sent, in order. */
    record Head(String version, int status, String reason, List<Map.Entry<String, String>> headers) {}

    /**
     * The next request on the stream, or null when the stream ends before its first byte (the peer
     * closed the connection between requests, which is how an HTTP/1.1 connection ends).
     */
    static Request readRequest(InputStream in) throws IOException {
        int first = in.read();
        if (first < 0) {
            return null;
        }
        int[] budget = {MAX_HEAD};
        String line = readLine(in, budget, first);
        String[] start = line.split(" ", -1);
        if (start.length != 3 || !TOKEN.matcher(start[0]).matches() || !TARGET.matcher(start[1]).matches()
                || !VERSION.matcher(start[2]).matches()) {
            throw new ProtocolException("malformed request line");
        }
        List<Map.Entry<String, String>> headers = readHeaders(in, budget);
        byte[] body = readBody(in, headers, budget, -1);
        return new Request(start[0], start[1], start[2], headers, body);
    }

    /** A response's status line and headers (its body is read with {@link #readResponseBody}). */
    static Head readResponseHead(InputStream in) throws IOException {
        int[] budget = {MAX_HEAD};
        String line = readLine(in, budget, -1);
        // RFC 9112 4: HTTP-version SP 3DIGIT SP [reason-phrase]; some servers leave the last SP out.
        if (line.length() < 12 || !VERSION.matcher(line.substring(0, 8)).matches() || line.charAt(8) != ' '
                || !line.substring(9, 12).chars().allMatch(c -> c >= '0' && c <= '9')
                || (line.length() > 12 && line.charAt(12) != ' ')) {
            throw new ProtocolException("malformed status line");
        }
        String reason = line.length() > 13 ? line.substring(13) : "";
        checkValue(reason);
        return new Head(line.substring(0, 8), Integer.parseInt(line.substring(9, 12)), reason, readHeaders(in, budget));
    }

    /**
     * The body of a response to a GET: none for 1xx, 204 and 304 (RFC 9112 6.3), else chunked,
     * Content-Length, or up to the end of the stream.
     */
    static byte[] readResponseBody(InputStream in, Head head) throws IOException {
        if (head.status() < 200 || head.status() == 204 || head.status() == 304) {
            return new byte[0];
        }
        return readBody(in, head.headers(), new int[] {MAX_HEAD}, MAX_BODY);
    }

    /** The values of header {@code name} (case-insensitive, RFC 9110 5.1), in order. */
    static List<String> values(List<Map.Entry<String, String>> headers, String name) {
        List<String> values = new ArrayList<>();
        for (Map.Entry<String, String> h : headers) {
            if (h.getKey().equalsIgnoreCase(name)) {
                values.add(h.getValue());
            }
        }
        return values;
    }

    /** Whether a comma-separated header (Connection, Upgrade) lists {@code token}, case-insensitively. */
    static boolean lists(List<Map.Entry<String, String>> headers, String name, String token) {
        for (String value : values(headers, name)) {
            for (String item : value.split(",")) {
                if (item.strip().equalsIgnoreCase(token)) {
                    return true;
                }
            }
        }
        return false;
    }

    /**
     * The body framed by {@code headers} (RFC 9112 6.3): chunked, or Content-Length bytes; with
     * neither, none for a request ({@code untilEnd} < 0) or up to {@code untilEnd} bytes up to the end
     * of the stream for a response.
     */
    private static byte[] readBody(InputStream in, List<Map.Entry<String, String>> headers, int[] budget, int untilEnd)
            throws IOException {
        List<String> encodings = values(headers, "Transfer-Encoding");
        List<String> lengths = values(headers, "Content-Length");
        if (!encodings.isEmpty()) {
            // Both at once is the classic smuggling shape (RFC 9112 6.1): refuse rather than pick one.
            if (!lengths.isEmpty()) {
                throw new ProtocolException("both Transfer-Encoding and Content-Length");
            }
            if (encodings.size() != 1 || !encodings.get(0).equalsIgnoreCase("chunked")) {
                throw new ProtocolException("transfer coding other than chunked");
            }
            return readChunked(in, budget);
        }
        if (!lengths.isEmpty()) {
            String length = null;
            for (String value : lengths) {
                for (String item : value.split(",", -1)) {
                    String digits = item.strip();
                    // RFC 9112 6.3: differing lengths are unrecoverable; repeats of one value are not.
                    if (!DIGITS.matcher(digits).matches() || (length != null && !digits.equals(length))) {
                        throw new ProtocolException("invalid Content-Length");
                    }
                    length = digits;
                }
            }
            long size = Long.parseLong(length);
            if (size > MAX_BODY) {
                throw new ProtocolException("body larger than " + MAX_BODY + " bytes");
            }
            return readExactly(in, (int) size);
        }
        if (untilEnd < 0) {
            return new byte[0];
        }
        byte[] body = in.readNBytes(untilEnd + 1);
        if (body.length > untilEnd) {
            throw new ProtocolException("body larger than " + untilEnd + " bytes");
        }
        return body;
    }

    private static byte[] readChunked(InputStream in, int[] budget) throws IOException {
        ByteArrayOutputStream body = new ByteArrayOutputStream();
        while (true) {
            var size = CHUNK_SIZE.matcher(readLine(in, budget, -1));
            if (!size.matches()) {
                throw new ProtocolException("malformed chunk size");
            }
            long length = Long.parseUnsignedLong(size.group(1), 16);
            if (length < 0 || length > MAX_BODY - body.size()) {
                throw new ProtocolException("body larger than " + MAX_BODY + " bytes");
            }
            if (length == 0) {
                readHeaders(in, budget); // trailer fields: framed and bounded, then dropped
                return body.toByteArray();
            }
            body.writeBytes(readExactly(in, (int) length));
            if (in.read() != '\r' || in.read() != '\n') {
                throw new ProtocolException("chunk not followed by CRLF");
            }
        }
    }

    private static List<Map.Entry<String, String>> readHeaders(InputStream in, int[] budget) throws IOException {
        List<Map.Entry<String, String>> headers = new ArrayList<>();
        while (true) {
            String line = readLine(in, budget, -1);
            if (line.isEmpty()) {
                return headers;
            }
            if (headers.size() == MAX_HEADERS) {
                throw new ProtocolException("more than " + MAX_HEADERS + " header lines");
            }
            int colon = line.indexOf(':');
            // No obs-fold (a line starting with SP/HTAB) and no space before the colon (RFC 9112 5.1, 5.2).
            if (colon <= 0 || !TOKEN.matcher(line.substring(0, colon)).matches()) {
                throw new ProtocolException("malformed header line");
            }
            String value = line.substring(colon + 1).strip();
            checkValue(value);
            headers.add(Map.entry(line.substring(0, colon), value));
        }
    }

    /** RFC 9110 5.5: field values are visible characters, obs-text, SP and HTAB; no CTL, no NUL. */
    private static void checkValue(String value) throws ProtocolException {
        for (int i = 0; i < value.length(); i++) {
            char c = value.charAt(i);
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                throw new ProtocolException("control character in a header value");
            }
        }
    }

    /**
     * One line without its CRLF, as ISO-8859-1 (any octet maps to one char, RFC 9110 5.5), charged to
     * {@code budget}. A bare CR or LF is refused: RFC 9112 2.2 lets a recipient accept a bare LF, but
     * two parsers that disagree on line ends disagree on where a message ends.
     */
    private static String readLine(InputStream in, int[] budget, int first) throws IOException {
        StringBuilder line = new StringBuilder();
        int c = first >= 0 ? first : in.read();
        while (true) {
            if (c < 0) {
                throw new EOFException("connection closed in the middle of a message");
            }
            if (--budget[0] < 0) {
                throw new ProtocolException("message head larger than " + MAX_HEAD + " bytes");
            }
            if (c == '\n' || (c == '\r' && in.read() != '\n')) {
                throw new ProtocolException("line not ended by CRLF");
            }
            if (c == '\r') {
                --budget[0];
                return line.toString();
            }
            line.append((char) c);
            c = in.read();
        }
    }

    private static byte[] readExactly(InputStream in, int length) throws IOException {
        byte[] data = in.readNBytes(length);
        if (data.length < length) {
            throw new EOFException("connection closed in the middle of a body");
        }
        return data;
    }

    static byte[] latin1(String text) {
        return text.getBytes(StandardCharsets.ISO_8859_1);
    }
}
