import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Base64;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import reversehub.Endpoint;
import reversehub.Response;
import reversehub.Subscriber;
import reversehub.Transport;

/**
 * Driven by tests/live/test_java.py: {@code LiveCheck SERVER_URL TOPIC [TRANSPORT]} serves an echo
 * handler (over TRANSPORT: auto, ptth or long_poll) and subscribes to TOPIC (a dash: no subscriber),
 * prints "ENDPOINT url" and "SUBSCRIBED url", one "UPDATE base64" line per verified notification,
 * "TRANSPORT endpoint's subscriber's" and "TRANSPORTS [each poller's]" when stdin says "transport", and stops cleanly (unsubscribe, DELETE) when stdin
 * closes or says "quit".
 */
public final class LiveCheck {
    public static void main(String[] args) throws Exception {
        String server = args[0];
        String topic = args[1];
        Transport transport = args.length > 2 ? Transport.valueOf(args[2].toUpperCase(Locale.ROOT)) : Transport.AUTO;
        Endpoint echo = new Endpoint(server + "/reversehttp", request -> {
            if (request.path().endsWith("/slow")) {
                // Still being handled when the test says "quit": close() must let it finish.
                System.out.println("HANDLING");
                System.out.flush();
                try {
                    Thread.sleep(1000);
                } catch (InterruptedException e) {
                    return Response.text(500, "interrupted\n");
                }
            }
            if (request.path().endsWith("/sized")) {
                // Answered the same whatever the method: a HEAD gets the GET's length and no body.
                return Response.text(200, "sized body");
            }
            return new Response(
                299, "Echo Reason",
                List.of(Map.entry("Content-Type", "text/plain"), Map.entry("X-Echo-Method", request.method),
                        Map.entry("X-Echo-Target", request.target),
                        Map.entry("X-Echo-Header", String.valueOf(request.header("x-test-header")))),
                request.body);
        }, null, null, null, 2, transport);
        System.out.println("ENDPOINT " + echo.start());
        Subscriber subscriber = null;
        if (!topic.equals("-")) {
            subscriber = new Subscriber(server + "/reversehttp", server + "/hub", topic, update -> {
                synchronized (System.out) {
                    System.out.println("UPDATE " + Base64.getEncoder().encodeToString(update.body()));
                    System.out.flush();
                }
            });
            subscriber.start(Duration.ofSeconds(30));
            System.out.println("SUBSCRIBED " + subscriber.callbackUrl());
        }
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null && !line.equals("quit")) {
            if (line.equals("transport")) {
                synchronized (System.out) {
                    System.out.println("TRANSPORT " + echo.transport() + " " + (subscriber == null ? "-" : subscriber.transport()));
                    System.out.println("TRANSPORTS " + echo.transports());
                    System.out.flush();
                }
            }
        }
        echo.close();
        if (subscriber != null) {
            subscriber.close();
        }
        System.out.println("CLOSED");
    }
}
