package reversehub;

import java.io.IOException;
import java.net.URI;
import java.net.URLDecoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import java.util.logging.Logger;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * A WebSub subscriber behind a relay: an {@link Endpoint} on a random name whose public URL is the
 * {@code hub.callback}. Only bodies whose {@code X-Hub-Signature} matches the subscription's secret
 * reach the callback; the others are answered 2xx and dropped (WebSub 7.1), so that a forger learns
 * nothing from the status.
 */
public class Subscriber implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(Subscriber.class.getName());
    /** WebSub 8 names these; the hub picks one, the subscriber must accept each. */
    private static final Map<String, String> ALGORITHMS =
            Map.of("sha1", "HmacSHA1", "sha256", "HmacSHA256", "sha384", "HmacSHA384", "sha512", "HmacSHA512");

    /** A verified notification. */
    public record Update(String contentType, byte[] body, Request request) {}

    private final String hub;
    private final String topic;
    private final Consumer<Update> callback;
    private final Endpoint endpoint;
    // 256 random bits; WebSub 5.1 requires fewer than 200 bytes.
    private final String secret = Endpoint.randomHex(32);
    private final HttpClient http = Endpoint.newClient();
    private volatile String expectedMode = "subscribe";
    private volatile CountDownLatch verified = new CountDownLatch(1);
    private volatile long leaseSeconds;
    private final ScheduledExecutorService renewer = Executors.newSingleThreadScheduledExecutor(task -> {
        Thread thread = new Thread(task, "reversehub-renewer");
        thread.setDaemon(true);
        return thread;
    });

    public Subscriber(String relay, String hub, String topic, Consumer<Update> callback) {
        this.hub = hub;
        this.topic = topic;
        this.callback = callback;
        this.endpoint = new Endpoint(relay, this::handle);
    }

    /** The callback URL (the endpoint's public URL), null before {@link #start(Duration)}. */
    public String callbackUrl() {
        return endpoint.publicUrl();
    }

    /** The transport the subscriber's endpoint gets deliveries by ({@link Endpoint#transport()}). */
    public Transport transport() {
        return endpoint.transport();
    }

    /** The lease the hub granted at the last verification (seconds), 0 before it. */
    public long leaseSeconds() {
        return leaseSeconds;
    }

    /**
     * Claims a relay name, subscribes, and waits up to {@code timeout} for the hub's verification;
     * then renews the subscription at 80% of each granted lease, since hubs never keep one forever.
     */
    public void start(Duration timeout) throws IOException, InterruptedException {
        endpoint.start();
        try {
            request("subscribe", timeout);
        } catch (IOException | InterruptedException | RuntimeException e) {
            renewer.shutdownNow();
            endpoint.close();
            throw e;
        }
        scheduleRenewal(leaseSeconds * 800);
    }

    private void scheduleRenewal(long delayMillis) {
        if (leaseSeconds <= 0 || renewer.isShutdown()) {
            return;
        }
        renewer.schedule(() -> {
            try {
                request("subscribe", Duration.ofSeconds(30));
                scheduleRenewal(leaseSeconds * 800);
            } catch (IOException | RuntimeException e) {
                // The lease still runs: try again soon rather than at the next 80%.
                LOG.warning("could not renew the subscription to " + topic + " (" + e.getMessage() + "); retrying");
                scheduleRenewal(Math.min(leaseSeconds * 100, 30_000));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt(); // closing
            }
        }, Math.max(delayMillis, 1), TimeUnit.MILLISECONDS);
    }

    /** Unsubscribes (waiting a few seconds for the hub to verify it) and gives the relay name up. */
    @Override
    public void close() {
        renewer.shutdownNow();
        try {
            // A renewal under way must not re-subscribe after the unsubscribe below.
            renewer.awaitTermination(5, TimeUnit.SECONDS);
            request("unsubscribe", Duration.ofSeconds(5));
        } catch (IOException e) {
            LOG.warning("could not unsubscribe from " + topic + ": " + e.getMessage());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } finally {
            endpoint.close();
        }
    }

    private void request(String mode, Duration timeout) throws IOException, InterruptedException {
        CountDownLatch latch = new CountDownLatch(1);
        verified = latch;
        expectedMode = mode;
        Map<String, String> form = new LinkedHashMap<>();
        form.put("hub.mode", mode);
        form.put("hub.topic", topic);
        form.put("hub.callback", endpoint.publicUrl());
        if (mode.equals("subscribe")) {
            form.put("hub.secret", secret);
        }
        HttpResponse<String> answer = http.send(
                HttpRequest.newBuilder(URI.create(hub)).timeout(Duration.ofSeconds(10))
                        .header("Content-Type", "application/x-www-form-urlencoded")
                        .POST(HttpRequest.BodyPublishers.ofString(Endpoint.formEncode(form))).build(),
                HttpResponse.BodyHandlers.ofString());
        if (answer.statusCode() >= 300) {
            throw new IOException("hub refused " + mode + ": HTTP " + answer.statusCode() + " " + answer.body().strip());
        }
        if (!latch.await(timeout.toMillis(), TimeUnit.MILLISECONDS)) {
            throw new IOException("hub did not verify the " + mode + " within " + timeout);
        }
    }

    private Response handle(Request request) {
        if (request.method.equals("GET")) {
            return verify(query(request.query()));
        }
        if (!request.method.equals("POST")) {
            return Response.text(405, "Method Not Allowed\n");
        }
        if (!signed(request)) {
            LOG.warning("dropped a notification without a valid X-Hub-Signature");
            return Response.text(202, "");
        }
        try {
            callback.accept(new Update(request.header("Content-Type"), request.body, request));
        } catch (RuntimeException e) {
            // A 5xx makes the hub deliver again later, which is what a failed callback wants.
            LOG.severe("subscriber callback failed: " + e);
            return Response.text(500, "callback failed\n");
        }
        return Response.text(202, "");
    }

    private Response verify(Map<String, String> params) {
        String mode = params.getOrDefault("hub.mode", "");
        String challenge = params.getOrDefault("hub.challenge", "");
        if (mode.equals("denied")) {
            LOG.warning("hub denied the subscription to " + topic + ": " + params.getOrDefault("hub.reason", ""));
            return Response.text(200, "");
        }
        // Echoing any challenge would let anyone subscribe us to topics we never asked for (WebSub 5.3).
        if (!mode.equals(expectedMode) || !topic.equals(params.get("hub.topic")) || challenge.isEmpty()) {
            return Response.text(404, "no such subscription\n");
        }
        String lease = params.getOrDefault("hub.lease_seconds", "");
        if (mode.equals("subscribe") && lease.matches("[0-9]{1,9}")) {
            leaseSeconds = Long.parseLong(lease);
        }
        verified.countDown();
        return Response.text(200, challenge);
    }

    private boolean signed(Request request) {
        String header = request.header("X-Hub-Signature");
        if (header == null || header.indexOf('=') < 0) {
            return false;
        }
        String algorithm = ALGORITHMS.get(header.substring(0, header.indexOf('=')).strip().toLowerCase(Locale.ROOT));
        if (algorithm == null) {
            return false;
        }
        try {
            Mac mac = Mac.getInstance(algorithm);
            mac.init(new SecretKeySpec(secret.getBytes(StandardCharsets.UTF_8), algorithm));
            byte[] expected = mac.doFinal(request.body);
            byte[] given = java.util.HexFormat.of().parseHex(header.substring(header.indexOf('=') + 1).strip());
            // Constant time, so that the answer's timing does not leak the right MAC byte by byte.
            return MessageDigest.isEqual(expected, given);
        } catch (IllegalArgumentException | GeneralSecurityException e) {
            return false;
        }
    }

    private static Map<String, String> query(String query) {
        Map<String, String> params = new HashMap<>();
        for (String pair : query.split("&")) {
            if (pair.isEmpty()) {
                continue;
            }
            int eq = pair.indexOf('=');
            String key = URLDecoder.decode(eq < 0 ? pair : pair.substring(0, eq), StandardCharsets.UTF_8);
            String value = eq < 0 ? "" : URLDecoder.decode(pair.substring(eq + 1), StandardCharsets.UTF_8);
            params.putIfAbsent(key, value);
        }
        return params;
    }
}
