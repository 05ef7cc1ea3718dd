package reversehub;

import java.io.IOException;
import java.net.ProtocolException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicReferenceArray;
import java.util.function.Function;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * Serves a handler on a ReverseHttp relay name, over PTTH where the relay offers it and over long
 * polls where it does not (docs/relay.md, docs/ptth.md).
 *
 * <p>{@code POST} name/token/lease to the gateway; the answer's {@code Link rel="first"} is a request URL,
 * {@code rel="related"} the public URL, {@code Location} the private URL. A {@code GET} on a request URL
 * holds until a request arrives (200 {@code message/http}) or times out (204); the reply is
 * {@code POST}ed to the URL the request came from, and polling goes on at {@code rel="next"}. Each
 * poller gets its own chain of request URLs by registering again with the same name and token.
 *
 * <p>With PTTH (draft-kazuho-ptth-ptth-00) the same {@code GET} on the request URL carries
 * {@code Upgrade: ptth}; after {@code 101 Switching Protocols} the relay writes requests on that
 * connection and reads the responses. A relay without PTTH answers that {@code GET} as the poll it
 * also is, which is served as such, and the poller goes on long-polling.
 */
public class Endpoint implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(Endpoint.class.getName());
    private static final SecureRandom RANDOM = new SecureRandom();
    /** How long a poll (or an upgrade request the relay answers as one) may be held. */
    private static final int POLL_MILLIS = 120_000;

    private final URI relay;
    private final Function<Request, Response> handler;
    private final String name;
    private final String token;
    private final Integer lease;
    private final int pollers;
    private final Transport transport;
    private final HttpClient http;
    private final List<Thread> threads = new ArrayList<>();
    private final Set<Thread> busy = ConcurrentHashMap.newKeySet(); // pollers handling a request
    private final Set<Ptth> connections = ConcurrentHashMap.newKeySet(); // open or opening
    private volatile boolean closing;
    private final AtomicReferenceArray<Transport> inUse; // each poller's, null until it got through
    private volatile String publicUrl;
    private volatile String privateUrl;

    /** An endpoint on a random name with a random token, two pollers and the relay's default lease. */
    public Endpoint(String relay, Function<Request, Response> handler) {
        this(relay, handler, null, null, null, 2);
    }

    /** {@code name}, {@code token} and {@code lease} (seconds) may be null: random name and token, default lease. */
    public Endpoint(String relay, Function<Request, Response> handler, String name, String token, Integer lease, int pollers) {
        this(relay, handler, name, token, lease, pollers, Transport.AUTO);
    }

    /**
     * As above, with a {@link Transport}: {@code AUTO} (PTTH where offered), {@code PTTH} or
     * {@code LONG_POLL}. Each of the {@code pollers} holds one PTTH connection or one poll at a time.
     */
    public Endpoint(String relay, Function<Request, Response> handler, String name, String token, Integer lease, int pollers,
            Transport transport) {
        if (pollers < 1) {
            throw new IllegalArgumentException("pollers must be at least 1");
        }
        this.relay = URI.create(relay);
        this.handler = handler;
        this.name = name != null ? name : "rh-" + randomHex(8);
        // 192 random bits: the token is what proves the name is ours.
        this.token = token != null ? token : randomHex(24);
        this.lease = lease;
        this.pollers = pollers;
        this.transport = transport == null ? Transport.AUTO : transport;
        this.inUse = new AtomicReferenceArray<>(pollers);
        this.http = newClient();
    }

    public String name() {
        return name;
    }

    /** The public URL (the relay's {@code rel="related"}), null before {@link #start()}. */
    public String publicUrl() {
        return publicUrl;
    }

    /**
     * The transport requests arrive by: {@link Transport#PTTH} or {@link Transport#LONG_POLL} when every
     * poller that got through uses it, {@link Transport#AUTO} while they differ (one came back on the
     * other after a reconnect), null before any got through. {@link #transports()} has each poller's.
     */
    public Transport transport() {
        Transport common = null;
        for (Transport t : transports()) {
            if (t != null) {
                if (common != null && common != t) {
                    return Transport.AUTO;
                }
                common = t;
            }
        }
        return common;
    }

    /** Each poller's transport ({@code PTTH} or {@code LONG_POLL}; null until it got through). */
    public List<Transport> transports() {
        List<Transport> all = new ArrayList<>();
        for (int i = 0; i < inUse.length(); i++) {
            all.add(inUse.get(i));
        }
        return all;
    }

    /** Registers the name and starts the pollers; returns the public URL. */
    public synchronized String start() throws IOException, InterruptedException {
        if (closing) {
            throw new IllegalStateException("endpoint is closed");
        }
        if (publicUrl != null) {
            return publicUrl;
        }
        String first = register();
        for (int i = 0; i < pollers; i++) {
            String url = i == 0 ? first : null;
            int index = i;
            Thread thread = new Thread(() -> poll(index, url), "reversehub-poller-" + name + "-" + i);
            thread.setDaemon(true);
            threads.add(thread);
            thread.start();
        }
        return publicUrl;
    }

    /** Stops polling (a request being handled is answered first) and gives the name up (DELETE). */
    @Override
    public void close() {
        synchronized (this) {
            if (closing) {
                return;
            }
            closing = true;
        }
        // A poller that is handling a request is left to send its reply; the others stop at once.
        for (Thread thread : threads) {
            if (!busy.contains(thread)) {
                thread.interrupt();
            }
        }
        // A socket read is not interruptible: close the connections (a busy one after its response).
        for (Ptth connection : connections) {
            connection.closeIdle();
        }
        try {
            for (Thread thread : threads) {
                thread.join(10_000);
                thread.interrupt();
            }
            if (privateUrl != null) {
                http.send(HttpRequest.newBuilder(URI.create(privateUrl)).timeout(Duration.ofSeconds(5)).DELETE().build(),
                        HttpResponse.BodyHandlers.discarding());
            }
        } catch (IOException e) {
            LOG.warning("could not relinquish relay name " + name + ": " + e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** Registers (or refreshes) the name; returns a fresh request URL. */
    private String register() throws IOException, InterruptedException {
        Map<String, String> form = new LinkedHashMap<>();
        form.put("name", name);
        form.put("token", token);
        if (lease != null) {
            form.put("lease", lease.toString());
        }
        HttpResponse<String> answer = http.send(
                HttpRequest.newBuilder(relay).timeout(Duration.ofSeconds(10))
                        .header("Content-Type", "application/x-www-form-urlencoded")
                        .POST(HttpRequest.BodyPublishers.ofString(formEncode(form))).build(),
                HttpResponse.BodyHandlers.ofString());
        if (answer.statusCode() == 403) {
            throw new IOException("relay name " + name + " is held by someone else (token mismatch)");
        }
        if (answer.statusCode() >= 300) {
            throw new IOException("relay refused " + name + ": HTTP " + answer.statusCode() + " " + answer.body().strip());
        }
        // HttpHeaders looks names up case-insensitively, so "Link" and "link" are the same header.
        List<String> links = answer.headers().allValues("Link");
        URI base = answer.uri();
        String first = Links.find(links, "first", base);
        String related = Links.find(links, "related", base);
        String location = answer.headers().firstValue("Location").orElse(null);
        if (first == null || related == null || location == null) {
            throw new IOException("relay answered without Link rel=first/related and Location");
        }
        privateUrl = base.resolve(location).toString();
        publicUrl = related;
        return first;
    }

    private void poll(int index, String start) {
        String url = start;
        long delay = 100;
        boolean upgrade = transport != Transport.LONG_POLL; // ask for PTTH on the next GET of url
        while (!closing) {
            try {
                if (url == null) {
                    url = register();
                }
                int status;
                List<String> links;
                byte[] body;
                if (upgrade) {
                    Ptth connection = new Ptth(URI.create(url));
                    Ptth.Answer answer = open(connection);
                    if (answer.connection() != null) {
                        inUse.set(index, Transport.PTTH);
                        if (serve(connection)) {
                            delay = 100;
                        }
                        if (closing) {
                            return;
                        }
                        // Reconnect on the same URL (it stays valid); a 404/410 then registers again.
                        LOG.log(Level.INFO, "PTTH connection ended; reconnecting in {0} ms", delay);
                        if (!pause(delay)) {
                            return;
                        }
                        delay = Math.min(delay * 2, 30_000);
                        continue;
                    }
                    status = answer.head().status();
                    links = Http1.values(answer.head().headers(), "Link");
                    body = answer.body();
                    if (transport == Transport.AUTO && status != 404 && status != 410) {
                        // No PTTH here: this answer is a poll's (or a refusal); long-poll from now on.
                        upgrade = false;
                        if (status != 200 && status != 204) {
                            LOG.warning("relay refused PTTH (HTTP " + status + "); long-polling instead");
                            continue;
                        }
                    }
                } else {
                    HttpResponse<byte[]> answer = http.send(
                            HttpRequest.newBuilder(URI.create(url)).timeout(Duration.ofMillis(POLL_MILLIS))
                                    .header("Accept", "message/http").GET().build(),
                            HttpResponse.BodyHandlers.ofByteArray());
                    status = answer.statusCode();
                    links = answer.headers().allValues("Link");
                    body = answer.body();
                }
                if (status == 404 || status == 410) {
                    url = null; // the registration is gone: register again for a new request URL
                    continue;
                }
                if (status != 200 && status != 204) {
                    throw new IOException("relay poll answered HTTP " + status);
                }
                delay = 100;
                String next = Links.find(links, "next", URI.create(url));
                if (status == 200) {
                    busy.add(Thread.currentThread());
                    try {
                        reply(url, handle(body));
                    } finally {
                        busy.remove(Thread.currentThread());
                    }
                }
                if (next != null) {
                    url = next;
                }
                if (transport == Transport.PTTH) {
                    // What the relay sent was served; PTTH is asked for again after the backoff.
                    throw new IOException("relay does not offer PTTH");
                }
                inUse.set(index, Transport.LONG_POLL);
            } catch (InterruptedException e) {
                return;
            } catch (IOException e) {
                if (closing) {
                    return;
                }
                // A network error may mean a new server: ask it for PTTH again.
                upgrade = transport != Transport.LONG_POLL;
                LOG.log(Level.WARNING, "relay poll failed ({0}); retrying in {1} ms", new Object[] {e, delay});
                if (!pause(delay)) {
                    return;
                }
                delay = Math.min(delay * 2, 30_000);
            }
        }
    }

    /** Sleeps about {@code delay} ms; false if interrupted (the endpoint is closing). */
    private static boolean pause(long delay) {
        try {
            // Jitter, so that many clients do not come back at the same moment.
            Thread.sleep(delay / 2 + RANDOM.nextInt((int) delay / 2 + 1));
            return true;
        } catch (InterruptedException stop) {
            return false;
        }
    }

    /** Opens {@code connection}, which {@link #close()} can end while it waits. */
    private Ptth.Answer open(Ptth connection) throws IOException {
        connections.add(connection);
        try {
            if (closing) {
                throw new IOException("endpoint is closing");
            }
            Ptth.Answer answer = connection.open(POLL_MILLIS);
            if (answer.connection() == null) {
                connections.remove(connection);
            }
            return answer;
        } catch (IOException | RuntimeException e) {
            connections.remove(connection);
            throw e;
        }
    }

    /**
     * Serves the requests of a transposed connection one after another (pipelined ones in order, as
     * HTTP/1.1 requires) until the relay closes it, it breaks, or the endpoint closes; true if it
     * served a request or lasted a while, so that a reconnect starts from the shortest backoff.
     */
    private boolean serve(Ptth connection) {
        long opened = System.nanoTime();
        try {
            while (!closing) {
                Request request = connection.next();
                if (request == null) {
                    break;
                }
                // Marked busy before begin(), so that close() does not interrupt a handler it lets finish.
                busy.add(Thread.currentThread());
                Reply reply;
                try {
                    if (!connection.begin()) {
                        break;
                    }
                    reply = respond(request, true);
                    connection.send(reply.bytes());
                } finally {
                    busy.remove(Thread.currentThread());
                }
                // RFC 9112 9.3, 9.6: either side's "close", or HTTP/1.0 without keep-alive, ends it.
                boolean close = reply.close() || Http1.lists(request.headers, "Connection", "close")
                        || (request.version.equals("HTTP/1.0") && !Http1.lists(request.headers, "Connection", "keep-alive"));
                if (close) {
                    break;
                }
            }
        } catch (ProtocolException e) {
            LOG.warning("relay sent a malformed request on the PTTH connection (" + e.getMessage() + "); closing it");
        } catch (IOException e) {
            if (!closing) {
                LOG.log(Level.FINE, "PTTH connection lost", e);
            }
        } finally {
            connections.remove(connection);
            connection.close();
        }
        return connection.served > 0 || System.nanoTime() - opened > 10_000_000_000L;
    }

    /** The reply to the delivered request, in its {@code message/http} form. */
    private byte[] handle(byte[] raw) {
        Request request;
        try {
            request = Request.parse(raw);
        } catch (IllegalArgumentException e) {
            LOG.warning("relay sent an unparseable request: " + e.getMessage());
            return Response.text(400, "Bad Request\n").serialize();
        }
        return respond(request, false).bytes();
    }

    /** A serialized response, and whether it asks to close the connection after it. */
    private record Reply(byte[] bytes, boolean close) {}

    private Reply respond(Request request, boolean transposed) {
        boolean head = request.method.equals("HEAD");
        try {
            Response response = handler.apply(request);
            // On a connection of our own an interim status would be taken for the start of a response
            // that never comes (RFC 9110 15.2): the relay's next request would be answered by the wrong one.
            if (transposed && response.status < 200) {
                throw new IllegalArgumentException("interim status " + response.status + " as a final response");
            }
            // Serialized here, so that a handler's invalid header is its 500, not the poller's failure.
            byte[] bytes = response.serialize(head);
            return new Reply(bytes, Http1.lists(response.headers, "Connection", "close"));
        } catch (RuntimeException e) {
            LOG.log(Level.SEVERE, "handler failed on " + request.method + " " + request.path(), e);
            return new Reply(Response.text(500, "Internal Server Error\n").serialize(head), false);
        }
    }

    private void reply(String url, byte[] reply) throws IOException, InterruptedException {
        HttpResponse<Void> answer = http.send(
                HttpRequest.newBuilder(URI.create(url)).timeout(Duration.ofSeconds(10))
                        .header("Content-Type", "message/http")
                        .POST(HttpRequest.BodyPublishers.ofByteArray(reply)).build(),
                HttpResponse.BodyHandlers.discarding());
        if (answer.statusCode() >= 300) {
            // The requester gets an error from the relay instead; nothing to retry here.
            LOG.warning("relay refused the reply: HTTP " + answer.statusCode());
        }
    }

    /**
     * HTTP/1.1 only: the JDK's default (HTTP/2) sends {@code Upgrade: h2c} on cleartext requests, which
     * uvicorn does not speak and answers by dropping the request body.
     */
    static HttpClient newClient() {
        return HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).connectTimeout(Duration.ofSeconds(10)).build();
    }

    static String formEncode(Map<String, String> form) {
        StringBuilder out = new StringBuilder();
        for (Map.Entry<String, String> e : form.entrySet()) {
            if (out.length() > 0) {
                out.append('&');
            }
            out.append(URLEncoder.encode(e.getKey(), StandardCharsets.UTF_8)).append('=')
                    .append(URLEncoder.encode(e.getValue(), StandardCharsets.UTF_8));
        }
        return out.toString();
    }

    static String randomHex(int bytes) {
        byte[] data = new byte[bytes];
        RANDOM.nextBytes(data);
        return HexFormat.of().formatHex(data);
    }
}
