package reversehub;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.ProtocolException;
import java.net.Socket;
import java.net.SocketOption;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.NoSuchAlgorithmException;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import jdk.net.ExtendedSocketOptions;

/**
 * A transposed connection (draft-kazuho-ptth-ptth-00, HTTP/1.1 form): we open it with
 * {@code GET} + {@code Upgrade: ptth} on a request URL, and after {@code 101 Switching Protocols} the
 * relay writes HTTP/1.1 requests on it and reads our responses, in order.
 *
 * <p>A relay that does not offer PTTH answers the same {@code GET} as the long poll it also is (200
 * {@code message/http} or 204): {@link #open} returns that answer, so trying PTTH first loses nothing.
 */
final class Ptth implements AutoCloseable {
    /** RFC 7639: the protocol we offer on the transposed connection, percent-encoded as the header needs. */
    static final String ALPN = "http%2F1.1";
    private static final int MESSAGE_MILLIS = 60_000;

    /** The answer to the upgrade request: a connection (status 101), or the poll answer it got instead. */
    record Answer(Http1.Head head, byte[] body, Ptth connection) {}

    private final URI url;
    private final Socket plain = new Socket();
    private volatile Socket socket = plain;
    private InputStream in;
    private OutputStream out;
    private boolean busy; // a request is being handled; guarded by this
    private boolean closed; // guarded by this
    /** Responses written; only the thread that serves the connection touches it. */
    int served;

    /** A connection to the request URL {@code url}, not yet made ({@link #open}). */
    Ptth(URI url) {
        this.url = url;
    }

    /**
     * Connects and asks for the upgrade; {@code pollMillis} bounds the wait for the answer, which a
     * relay without PTTH holds as long as a poll. {@link #closeIdle()} from another thread ends the
     * wait. On any answer but 101 the connection is closed and the answer returned.
     */
    Answer open(int pollMillis) throws IOException {
        boolean tls = "https".equalsIgnoreCase(url.getScheme());
        if (!tls && !"http".equalsIgnoreCase(url.getScheme())) {
            throw new IOException("request URL is neither http nor https");
        }
        String host = url.getHost();
        int port = url.getPort() != -1 ? url.getPort() : (tls ? 443 : 80);
        try {
            keepAlive(plain);
            plain.connect(new InetSocketAddress(host, port), 10_000);
            plain.setTcpNoDelay(true);
            if (tls) {
                socket = secure(plain, host, port);
            }
            synchronized (this) {
                if (closed) {
                    throw new IOException("closed");
                }
            }
            socket.setSoTimeout(pollMillis);
            in = new BufferedInputStream(socket.getInputStream());
            out = new BufferedOutputStream(socket.getOutputStream());
            String target = url.getRawPath().isEmpty() ? "/" : url.getRawPath();
            if (url.getRawQuery() != null) {
                target += "?" + url.getRawQuery();
            }
            String authority = url.getPort() != -1 ? host + ":" + port : host;
            // Accept: message/http, so that a relay without PTTH answers with the form we parse.
            out.write(Http1.latin1("GET " + target + " HTTP/1.1\r\nHost: " + authority
                    + "\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: " + ALPN + "\r\nAccept: message/http\r\n\r\n"));
            out.flush();
            Http1.Head head = Http1.readResponseHead(in);
            if (head.status() != 101) {
                byte[] body = Http1.readResponseBody(in, head);
                close();
                return new Answer(head, body, null);
            }
            if (!Http1.lists(head.headers(), "Upgrade", "ptth")) {
                throw new ProtocolException("101 without Upgrade: ptth");
            }
            String alpn = String.join(",", Http1.values(head.headers(), "ALPN")).strip();
            if (!URLDecoder.decode(alpn, StandardCharsets.UTF_8).equals("http/1.1")) {
                throw new ProtocolException("relay chose a protocol we did not offer: " + alpn);
            }
            // The relay now speaks first, and may stay silent for hours: TCP keep-alive, not a read
            // timeout, tells a dead peer from a quiet one.
            socket.setSoTimeout(0);
            return new Answer(head, new byte[0], this);
        } catch (IOException | RuntimeException e) {
            close();
            throw e;
        }
    }

    /**
     * The next request, or null when the relay closed the connection between requests. The wait for
     * its first byte is unbounded (the relay writes when someone calls); a request that stops midway
     * for a minute ends the connection, so a stalled one does not hold the poller for ever.
     */
    Request next() throws IOException {
        socket.setSoTimeout(0);
        in.mark(1);
        if (in.read() < 0) {
            return null;
        }
        in.reset();
        socket.setSoTimeout(MESSAGE_MILLIS);
        return Http1.readRequest(in);
    }

    /** Marks the connection busy with a request; false if it was closed meanwhile. */
    synchronized boolean begin() {
        busy = !closed;
        return busy;
    }

    /** Writes the response to the request {@link #begin()} took, and clears busy. */
    void send(byte[] response) throws IOException {
        try {
            out.write(response);
            out.flush();
            served++;
        } finally {
            synchronized (this) {
                busy = false;
            }
        }
    }

    /** Closes the connection unless a request is being handled (its response is written first). */
    synchronized void closeIdle() {
        if (!busy) {
            close();
        }
    }

    @Override
    public synchronized void close() {
        closed = true;
        try {
            // The plain socket too: closing it ends a TLS handshake or a connect still under way.
            socket.close();
            plain.close();
        } catch (IOException e) {
            // closing anyway
        }
    }

    /**
     * SO_KEEPALIVE, and where the platform allows, probes after a minute of silence: the default
     * (two hours on Linux) is longer than most NATs and firewalls keep an idle connection's mapping.
     */
    private static void keepAlive(Socket socket) throws IOException {
        socket.setKeepAlive(true);
        set(socket, ExtendedSocketOptions.TCP_KEEPIDLE, 60);
        set(socket, ExtendedSocketOptions.TCP_KEEPINTERVAL, 15);
        set(socket, ExtendedSocketOptions.TCP_KEEPCOUNT, 4);
    }

    private static void set(Socket socket, SocketOption<Integer> option, int value) throws IOException {
        if (socket.supportedOptions().contains(option)) {
            socket.setOption(option, value);
        }
    }

    /** TLS over the connected socket, with the JDK's trust store and host name verification. */
    private static Socket secure(Socket plain, String host, int port) throws IOException {
        SSLContext context;
        try {
            context = SSLContext.getDefault();
        } catch (NoSuchAlgorithmException e) {
            throw new IOException("no default TLS context", e);
        }
        SSLSocket socket = (SSLSocket) context.getSocketFactory().createSocket(plain, host, port, true);
        SSLParameters parameters = socket.getSSLParameters();
        // Without this, SSLSocket checks the chain but not that the certificate names this host.
        parameters.setEndpointIdentificationAlgorithm("HTTPS");
        // TLS ALPN: the upgrade is an HTTP/1.1 mechanism (the draft: PTTH cannot originate over HTTP/2).
        parameters.setApplicationProtocols(new String[] {"http/1.1"});
        socket.setSSLParameters(parameters);
        socket.startHandshake();
        return socket;
    }
}
