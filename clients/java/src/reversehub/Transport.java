package reversehub;

/** How an {@link Endpoint} gets its requests from the relay. */
public enum Transport {
    /** PTTH where the relay offers it, long polls where it does not (the default). */
    AUTO,
    /** Transposed connections only (draft-kazuho-ptth-ptth-00): {@code Upgrade: ptth} on the request URL. */
    PTTH,
    /** Long polls only: {@code GET} the request URL, {@code POST} the reply (the ReverseHttp protocol). */
    LONG_POLL
}
