package reversehub;

import java.net.URI;
import java.util.List;
import java.util.Locale;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** RFC 8288 Link headers: several header lines or one comma-joined line, quoted or bare rel. */
final class Links {
    private static final Pattern LINK =
            Pattern.compile("<([^>]*)>((?:\\s*;\\s*[^;,=\\s]+(?:\\s*=\\s*(?:\"(?:[^\"\\\\]|\\\\.)*\"|[^;,\\s]*))?)*)");
    private static final Pattern PARAM =
            Pattern.compile(";\\s*([^;,=\\s]+)(?:\\s*=\\s*(?:\"((?:[^\"\\\\]|\\\\.)*)\"|([^;,\\s]*)))?");

    private Links() {}

    /** The first URL with relation {@code rel}, resolved against {@code base}, or null. */
    static String find(List<String> values, String rel, URI base) {
        for (String value : values) {
            Matcher link = LINK.matcher(value);
            while (link.find()) {
                Matcher param = PARAM.matcher(link.group(2));
                while (param.find()) {
                    if (!param.group(1).equalsIgnoreCase("rel")) {
                        continue;
                    }
                    String raw = param.group(2) != null ? param.group(2) : (param.group(3) == null ? "" : param.group(3));
                    for (String r : raw.toLowerCase(Locale.ROOT).split("\\s+")) {
                        if (r.equals(rel)) {
                            return base.resolve(link.group(1).strip()).toString();
                        }
                    }
                }
            }
        }
        return null;
    }
}
