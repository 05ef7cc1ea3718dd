import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import reversehub.Endpoint;
import reversehub.Response;
import reversehub.Subscriber;

/**
 * Driven by tests/live/test_java.py: {@code LiveCheck SERVER_URL TOPIC} serves an echo handler and
 * subscribes to TOPIC, prints "ENDPOINT url" and "SUBSCRIBED url", one "UPDATE base64" line per
 * verified notification, and stops cleanly (unsubscribe, DELETE) when stdin closes or says "quit".
 */
public final class LiveCheck {
    public static void main(String[] args) throws Exception {
        String server = args[0];
        String topic = args[1];
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
            return new Response(
                299, "Echo Reason",
                List.of(Map.entry("Content-Type", "text/plain"), Map.entry("X-Echo-Method", request.method),
                        Map.entry("X-Echo-Target", request.target),
                        Map.entry("X-Echo-Header", String.valueOf(request.header("x-test-header")))),
                request.body);
        });
        System.out.println("ENDPOINT " + echo.start());
        Subscriber subscriber = new Subscriber(server + "/reversehttp", server + "/hub", topic, update -> {
            synchronized (System.out) {
                System.out.println("UPDATE " + Base64.getEncoder().encodeToString(update.body()));
                System.out.flush();
            }
        });
        subscriber.start(Duration.ofSeconds(30));
        System.out.println("SUBSCRIBED " + subscriber.callbackUrl());
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null && !line.equals("quit")) {
            // keep serving until told to stop
        }
        echo.close();
        subscriber.close();
        System.out.println("CLOSED");
    }
}
