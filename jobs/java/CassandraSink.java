package streamrec.flink;

import com.datastax.oss.driver.api.core.ConsistencyLevel;
import com.datastax.oss.driver.api.core.CqlSession;
import com.datastax.oss.driver.api.core.CqlSessionBuilder;
import com.datastax.oss.driver.api.core.DefaultConsistencyLevel;
import com.datastax.oss.driver.api.core.config.DefaultDriverOption;
import com.datastax.oss.driver.api.core.config.DriverConfigLoader;
import com.datastax.oss.driver.api.core.cql.BatchStatement;
import com.datastax.oss.driver.api.core.cql.BoundStatement;
import com.datastax.oss.driver.api.core.cql.DefaultBatchType;
import com.datastax.oss.driver.api.core.cql.PreparedStatement;
import com.datastax.oss.driver.api.core.cql.SimpleStatement;
import com.datastax.oss.driver.api.core.cql.Statement;
import com.datastax.oss.driver.api.core.servererrors.InvalidQueryException;
import com.datastax.oss.driver.api.core.ssl.ProgrammaticSslEngineFactory;
import com.datastax.oss.driver.internal.core.connection.ConstantReconnectionPolicy;
import com.datastax.oss.driver.internal.core.loadbalancing.DcInferringLoadBalancingPolicy;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import org.apache.flink.api.common.operators.ProcessingTimeService;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.ThreadSafeSimpleCounter;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;

/**
 * The job's Cassandra sink, in the JVM: idempotent upserts of the records the job sends to Kafka (recommendations,
 * fraud flags, deletions), so the Python operators spend nothing on Cassandra (the Python driver's event loop and
 * per-row work shared their GIL: measured, the largest cost in the low-latency profile).
 *
 * <p>The same rows as {@code streamrec/sinks.py} (the plain consumer's writer): every write carries {@code USING
 * TIMESTAMP <event time in µs>} and a key derived from the record, so a replay after failover rewrites the same cells
 * and an older event never overwrites a newer one, whatever order writes land in. Rows go in UNLOGGED batches of at
 * most {@code batch_max_rows} statements and about {@code batch_max_bytes} of values (below Cassandra's batch warn
 * thresholds); a batch is sent when full or {@code linger_ms} after its first row. At most {@code max_in_flight} rows
 * are pending: beyond that {@code write} blocks (backpressure). A failed request is retried whole with exponential
 * backoff; one Cassandra rejects as too large is split; one that exhausts its retries fails the job, which restarts
 * from its last checkpoint. {@code flush} (at every checkpoint barrier and at the end of input) waits until every row
 * sent has landed: a completed checkpoint's rows are all in Cassandra (at least once; idempotent).
 *
 * <p>Coalescing ({@code coalesce_ms} &gt; 0): a recommendation row is held up to {@code coalesce_ms} (and never past
 * the next flush) and replaced by a newer row of the same user meanwhile; only the rows left are sent. Every row of
 * {@code recommendations_by_user} writes all of its cells with {@code USING TIMESTAMP} = its event time, so Cassandra
 * keeps the row of the greatest timestamp whatever was sent: dropping a held row whose timestamp is below another
 * held row's of the same user changes nothing Cassandra ends up with (rows of equal timestamps are all sent:
 * Cassandra settles those cell by cell). What changes: a list is readable in Cassandra up to {@code coalesce_ms}
 * later, and a user's superseded lists never reach it (the Kafka topic has every list). At most
 * {@code coalesce_max_users} users' rows are held: one more sends them all. A list is held as its text and turned
 * into a row only when it is sent: most held lists are superseded in a backlog (about 82 % at the bench's), and
 * reading a list's three top-level fields (kind, event_ts, user_key: {@link #heldTime}) costs a fraction of parsing
 * and binding it. A list those fields do not describe as a recommendation of the record's key is bound at once, as
 * any other record, so its error (if any) is raised when it arrives.
 *
 * <p>Input: the strings the Kafka sinks get: JSON, or the recommendations topic's "KEY\nJSON" ("KEY\n", a tombstone,
 * has no row: the erasure's deletion record deletes it). Deletion records whose {@code target} is not "cassandra" have
 * no row. Config: one
 * JSON object (see {@code jobs/recommend.py cassandra_sink}); the password is read from {@code password_env}, else
 * {@code password_file}, when the writer opens, so it is never part of the job graph.
 */
public final class CassandraSink implements Sink<String> {
    private static final long serialVersionUID = 1L;

    private final String conf;

    public CassandraSink(String confJson) {
        this.conf = confJson;
    }

    @Override
    public SinkWriter<String> createWriter(WriterInitContext context) throws IOException {
        return new Writer(new ObjectMapper().readTree(conf), context);
    }

    /** A record the sink cannot write: a bug upstream (the records are the job's own outputs), so the job fails. */
    static final class RecordError extends IOException {
        private static final long serialVersionUID = 1L;

        RecordError(String message, Throwable cause) {
            super(message, cause);
        }
    }

    static final class Writer implements SinkWriter<String> {
        private static final ObjectMapper JSON = new ObjectMapper();

        private final int maxInFlight;
        private final int maxRows;
        private final int maxBytes;
        private final int retries;
        private final long backoffMs;
        private final long maxBackoffMs;
        private final long lingerMs;
        private final long coalesceMs;
        private final int coalesceMaxUsers;
        private Map<String, Held> held = new HashMap<>(); // user_key → its newest recommendation row(s) held back
        private boolean holding;
        private final Counter coalesced;
        private final CqlSession session;
        private final PreparedStatement recommendation;
        private final PreparedStatement flag;
        private final PreparedStatement deletion;
        private final PreparedStatement flagDeletion;
        private final Semaphore permits;
        private final Object landed = new Object();
        private final AtomicReference<Throwable> error = new AtomicReference<>();
        private final ScheduledExecutorService retryTimer;
        private final ProcessingTimeService time;
        private final Counter written;
        private final Counter retried;
        private List<BoundStatement> open = new ArrayList<>();
        private int openBytes;
        private boolean lingering;

        Writer(JsonNode c, WriterInitContext context) throws IOException {
            maxInFlight = conf(c, "max_in_flight").asInt();
            maxRows = Math.max(1, Math.min(conf(c, "batch_max_rows").asInt(), maxInFlight));
            maxBytes = conf(c, "batch_max_bytes").asInt();
            retries = conf(c, "retries").asInt();
            backoffMs = conf(c, "backoff_ms").asLong();
            maxBackoffMs = conf(c, "max_backoff_ms").asLong();
            lingerMs = conf(c, "linger_ms").asLong();
            coalesceMs = conf(c, "coalesce_ms").asLong();
            coalesceMaxUsers = Math.max(1, conf(c, "coalesce_max_users").asInt());
            session = connect(c);
            String ks = c.path("keyspace").asText();
            ConsistencyLevel cl = DefaultConsistencyLevel.valueOf(conf(c, "consistency").asText());
            recommendation = prepare(cl, "INSERT INTO " + ks + ".recommendations_by_user (user_key, key_id, items, "
                    + "scores, model_version, event_id, event_ts) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?");
            flag = prepare(cl, "INSERT INTO " + ks + ".fraud_flags (subject_kind, subject, flag_id, score, reasons, "
                    + "evidence, model_version, event_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?");
            deletion = prepare(cl, "DELETE FROM " + ks + ".recommendations_by_user USING TIMESTAMP ? "
                    + "WHERE user_key = ?");
            flagDeletion = prepare(cl, "DELETE FROM " + ks + ".fraud_flags USING TIMESTAMP ? "
                    + "WHERE subject_kind = ? AND subject = ?");
            permits = new Semaphore(maxInFlight);
            retryTimer = Executors.newSingleThreadScheduledExecutor(r -> {
                Thread t = new Thread(r, "streamrec-cassandra-retry");
                t.setDaemon(true);
                return t;
            });
            time = context.getProcessingTimeService();
            // counted on the driver's threads
            written = context.metricGroup().counter("cassandraRowsWritten", new ThreadSafeSimpleCounter());
            retried = context.metricGroup().counter("cassandraRequestsRetried", new ThreadSafeSimpleCounter());
            coalesced = context.metricGroup().counter("cassandraRowsCoalesced");
        }

        /** A setting `jobs/recommend.py cassandra_sink` always passes (its defaults live in conf/local.yaml). */
        private static JsonNode conf(JsonNode c, String key) throws IOException {
            JsonNode v = c.get(key);
            if (v == null || v.isNull()) {
                throw new IOException("CassandraSink: setting " + key + " missing from its config " + c);
            }
            return v;
        }

        private static CqlSession connect(JsonNode c) throws IOException {
            Duration timeout = Duration.ofMillis((long) (conf(c, "request_timeout_s").asDouble() * 1000));
            ClassLoader loader = CassandraSink.class.getClassLoader();
            DriverConfigLoader config = DriverConfigLoader.programmaticBuilder(loader)
                    .withDuration(DefaultDriverOption.REQUEST_TIMEOUT, timeout)
                    // one node or many, the local data centre is the contact points'
                    .withClass(DefaultDriverOption.LOAD_BALANCING_POLICY_CLASS, DcInferringLoadBalancingPolicy.class)
                    // a node that went away is tried again every second (the default backs off to a minute)
                    .withClass(DefaultDriverOption.RECONNECTION_POLICY_CLASS, ConstantReconnectionPolicy.class)
                    .withDuration(DefaultDriverOption.RECONNECTION_BASE_DELAY, Duration.ofSeconds(1))
                    .withBoolean(DefaultDriverOption.METADATA_SCHEMA_ENABLED, false)
                    .withBoolean(DefaultDriverOption.RECONNECT_ON_INIT, false)
                    .build();
            CqlSessionBuilder b = CqlSession.builder().withClassLoader(loader).withConfigLoader(config)
                    .withKeyspace(c.path("keyspace").asText());
            int port = conf(c, "port").asInt();
            for (JsonNode h : c.path("hosts")) {
                b = b.addContactPoint(new InetSocketAddress(h.asText(), port));
            }
            String user = c.path("username").asText("");
            if (!user.isEmpty()) {
                b = b.withAuthCredentials(user, password(c));
            }
            if (c.path("tls").asBoolean(false)) {
                // verifies the node's certificate against ca_file (else the JVM's trust store) and its host name
                b = b.withSslEngineFactory(new ProgrammaticSslEngineFactory(sslContext(c.path("ca_file").asText("")),
                        null, true));
            }
            try {
                return b.build();
            } catch (RuntimeException e) {
                throw new IOException("Cassandra " + c.path("hosts") + ":" + port + " (keyspace "
                        + c.path("keyspace").asText() + "): cannot connect: " + e.getMessage(), e);
            }
        }

        private static String password(JsonNode c) throws IOException {
            String env = c.path("password_env").asText("");
            String fromEnv = env.isEmpty() ? null : System.getenv(env);
            if (fromEnv != null && !fromEnv.isEmpty()) {
                return fromEnv;
            }
            String file = c.path("password_file").asText("");
            if (file.isEmpty() || !Files.exists(Path.of(file))) {
                throw new IOException("Cassandra role " + c.path("username").asText() + ": no password (set " + env
                        + (file.isEmpty() ? "" : " or create " + file) + ")");
            }
            return Files.readString(Path.of(file), StandardCharsets.UTF_8); // the whole file (checked by the client)
        }

        private static SSLContext sslContext(String caFile) throws IOException {
            try {
                TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
                if (caFile.isEmpty()) {
                    tmf.init((KeyStore) null);
                } else {
                    KeyStore ks = KeyStore.getInstance(KeyStore.getDefaultType());
                    ks.load(null, null);
                    int i = 0;
                    try (InputStream in = Files.newInputStream(Path.of(caFile))) {
                        for (Certificate cert : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                            ks.setCertificateEntry("ca" + i++, cert);
                        }
                    }
                    tmf.init(ks);
                }
                SSLContext ctx = SSLContext.getInstance("TLS");
                ctx.init(null, tmf.getTrustManagers(), null);
                return ctx;
            } catch (IOException e) {
                throw e;
            } catch (Exception e) {
                throw new IOException("Cassandra TLS: cannot read CA file " + caFile + ": " + e.getMessage(), e);
            }
        }

        private PreparedStatement prepare(ConsistencyLevel cl, String cql) {
            return session.prepare(SimpleStatement.newInstance(cql).setConsistencyLevel(cl).setIdempotent(true));
        }

        // ------------------------------------------------------------------ rows

        /** A user's held lists (JSON): those of the greatest event time seen (usually one). */
        static final class Held {
            long ts;
            final List<String> rows = new ArrayList<>(1);

            Held(long ts) {
                this.ts = ts;
            }
        }

        @Override
        public void write(String element, Context context) throws IOException, InterruptedException {
            raise();
            int nl = element.startsWith("{") ? -1 : element.indexOf('\n'); // "KEY\nJSON": a list on the recommendations topic
            String json = nl < 0 ? element : element.substring(nl + 1);
            if (nl >= 0 && json.isEmpty()) {
                return; // "KEY\n", a tombstone: the erasure's deletion record deletes the row
            }
            if (nl >= 0 && coalesceMs > 0) { // a list, held as its text
                String user = element.substring(0, nl);
                long ts = heldTime(user, json);
                if (ts != NOT_HELD) {
                    hold(user, ts, json);
                    return;
                }
            }
            BoundStatement row = bind(json); // anything else that is not one JSON record fails, naming it
            if (row != null) {
                add(row);
            }
        }

        static final long NOT_HELD = Long.MIN_VALUE;

        /**
         * A list's event time (ms) if its top-level fields say it is a recommendation of {@code user} with an
         * integer event_ts whose microseconds fit a long (what {@link #bindRecommendation} writes as USING
         * TIMESTAMP); else {@link #NOT_HELD}. Reads tokens only (no tree): nested values are skipped.
         */
        static long heldTime(String user, String json) {
            boolean kind = false;
            boolean owner = false;
            long ts = NOT_HELD;
            try (JsonParser p = JSON.getFactory().createParser(json)) {
                if (p.nextToken() != JsonToken.START_OBJECT) {
                    return NOT_HELD;
                }
                JsonToken t;
                while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                    String name = p.getCurrentName();
                    JsonToken v = p.nextToken();
                    if (v == JsonToken.START_OBJECT || v == JsonToken.START_ARRAY) {
                        p.skipChildren();
                    } else if (name.equals("kind")) {
                        kind = v == JsonToken.VALUE_STRING && p.getText().equals("recommendation");
                    } else if (name.equals("user_key")) {
                        owner = v == JsonToken.VALUE_STRING && p.getText().equals(user);
                    } else if (name.equals("event_ts")) {
                        ts = v == JsonToken.VALUE_NUMBER_INT && p.getNumberType() != JsonParser.NumberType.BIG_INTEGER
                                && Math.abs(p.getLongValue()) <= Long.MAX_VALUE / 1000 ? p.getLongValue() : NOT_HELD;
                    }
                }
                if (t != JsonToken.END_OBJECT || p.nextToken() != null) {
                    return NOT_HELD; // not one whole object: bind's parse names the error
                }
            } catch (IOException e) {
                return NOT_HELD;
            }
            return kind && owner ? ts : NOT_HELD;
        }

        /** Hold a user's list back (see the class comment). */
        private void hold(String user, long ts, String row) throws IOException, InterruptedException {
            Held h = held.get(user);
            if (h == null) {
                if (held.size() >= coalesceMaxUsers) {
                    release();
                }
                h = new Held(ts);
                held.put(user, h);
            } else if (ts > h.ts) {
                coalesced.inc(h.rows.size());
                h.rows.clear();
                h.ts = ts;
            } else if (ts < h.ts) {
                coalesced.inc();
                return;
            }
            h.rows.add(row);
            if (!holding) {
                holding = true;
                time.registerTimer(time.getCurrentProcessingTime() + coalesceMs, t -> {
                    holding = false;
                    release();
                });
            }
        }

        /** Every held list, as its row, into the batches. */
        private void release() throws IOException, InterruptedException {
            if (held.isEmpty()) {
                return;
            }
            Map<String, Held> rows = held;
            held = new HashMap<>();
            for (Held h : rows.values()) {
                for (String r : h.rows) {
                    BoundStatement row = bind(r);
                    if (row != null) {
                        add(row);
                    }
                }
            }
        }

        private void add(BoundStatement row) throws InterruptedException {
            int size = size(row);
            if (!open.isEmpty() && (open.size() >= maxRows || openBytes + size > maxBytes)) {
                sendOpen();
            }
            open.add(row);
            openBytes += size;
            if (open.size() >= maxRows) {
                sendOpen();
            } else if (!lingering) {
                lingering = true;
                time.registerTimer(time.getCurrentProcessingTime() + lingerMs, t -> {
                    lingering = false;
                    sendOpen();
                });
            }
        }

        /** The row of one JSON record (null: a record with no Cassandra row). */
        BoundStatement bind(String json) throws IOException {
            JsonNode r;
            try {
                r = JSON.readTree(json);
            } catch (IOException e) {
                throw new RecordError("not a JSON record for Cassandra: " + abbrev(json), e);
            }
            String kind = r.path("kind").asText("");
            try {
                switch (kind) {
                    case "recommendation":
                        return bindRecommendation(r);
                    case "fraud_flag":
                    case "detector_alarm": // subject_kind 'detector', subject its name
                        return bindFlag(r);
                    case "deletion":
                        if (!"cassandra".equals(r.path("target").asText("cassandra"))) {
                            return null;
                        }
                        String table = r.path("table").asText("recommendations_by_user");
                        if (table.equals("recommendations_by_user")) {
                            return deletion.bind(tsMicros(r), text(r, "user_key"));
                        }
                        if (table.equals("fraud_flags")) {
                            String subject = r.path("subject").asText("");
                            return flagDeletion.bind(tsMicros(r), r.path("subject_kind").asText("user"),
                                    subject.isEmpty() ? text(r, "user_key") : subject);
                        }
                        throw new RecordError("deletion of table " + table + " has no Cassandra table", null);
                    default:
                        if ("kafka".equals(r.path("target").asText(""))) {
                            return null; // a deletion notice for Kafka (a tombstone's record)
                        }
                        throw new RecordError("record kind '" + kind + "' has no Cassandra table: " + abbrev(json),
                                null);
                }
            } catch (IllegalArgumentException e) {
                throw new RecordError("malformed " + kind + " record for Cassandra (" + e.getMessage() + "): "
                        + abbrev(json), e);
            }
        }

        private BoundStatement bindRecommendation(JsonNode r) {
            JsonNode items = r.path("items");
            JsonNode scores = r.get("scores");
            List<String> ids = new ArrayList<>(items.size());
            List<Float> s = new ArrayList<>(items.size());
            for (JsonNode i : items) {
                ids.add(i.isObject() ? text(i, "item_id") : i.asText());
                if (scores == null || scores.isNull()) {
                    s.add((float) i.path("score").asDouble(0.0));
                }
            }
            if (scores != null && !scores.isNull()) {
                for (JsonNode x : scores) {
                    s.add((float) x.asDouble());
                }
            }
            return recommendation.bind(text(r, "user_key"), r.path("key_id").asText(""), ids, s,
                    r.path("model_version").asText(""), r.path("event_id").asText(""), eventTime(r), tsMicros(r));
        }

        private BoundStatement bindFlag(JsonNode r) {
            List<String> reasons = new ArrayList<>();
            for (JsonNode x : r.path("reasons")) {
                reasons.add(x.asText());
            }
            JsonNode ev = r.path("evidence");
            String evidence = ev.isMissingNode() ? "{}" : ev.isTextual() ? ev.asText() : ev.toString();
            JsonNode score = r.get("score");
            if (score == null || !score.isNumber()) {
                throw new IllegalArgumentException("score is not a number");
            }
            return flag.bind(text(r, "subject_kind"), text(r, "subject"), text(r, "flag_id"), score.asDouble(),
                    reasons, evidence, r.path("model_version").asText(""), eventTime(r), tsMicros(r));
        }

        private static String text(JsonNode r, String field) {
            JsonNode v = r.get(field);
            if (v == null || v.isNull()) {
                throw new IllegalArgumentException("no " + field);
            }
            return v.asText();
        }

        private static long eventTs(JsonNode r) {
            JsonNode v = r.get("event_ts");
            if (v == null || !v.canConvertToLong()) {
                throw new IllegalArgumentException("event_ts is not an integer");
            }
            return v.asLong();
        }

        private static Instant eventTime(JsonNode r) {
            return Instant.ofEpochMilli(eventTs(r));
        }

        private static Long tsMicros(JsonNode r) {
            return Math.multiplyExact(eventTs(r), 1000L);
        }

        private static String abbrev(String s) {
            return s.length() <= 200 ? s : s.substring(0, 200) + "…";
        }

        /** Roughly Cassandra's size of the row for its batch thresholds: values plus 16 bytes per cell. */
        private static int size(BoundStatement row) {
            int n = 0;
            for (int i = 0; i < row.size(); i++) {
                ByteBuffer v = row.getBytesUnsafe(i);
                n += 16 + (v == null ? 0 : v.remaining());
            }
            return n;
        }

        // ------------------------------------------------------------------ requests

        private void sendOpen() throws InterruptedException {
            if (open.isEmpty()) {
                return;
            }
            List<BoundStatement> group = open;
            open = new ArrayList<>();
            openBytes = 0;
            permits.acquire(group.size()); // backpressure: at most max_in_flight rows pending
            send(group, 0);
        }

        private void send(List<BoundStatement> group, int attempt) {
            Statement<?> request = group.size() == 1 ? group.get(0)
                    : BatchStatement.newInstance(DefaultBatchType.UNLOGGED, group.toArray(new BoundStatement[0]))
                            .setIdempotent(true).setConsistencyLevel(group.get(0).getConsistencyLevel());
            try {
                session.executeAsync(request).whenComplete((rs, err) -> {
                    if (err == null) {
                        done(group.size(), null);
                    } else {
                        failed(group, attempt, err);
                    }
                });
            } catch (RuntimeException e) {
                failed(group, attempt, e);
            }
        }

        private void failed(List<BoundStatement> group, int attempt, Throwable err) {
            Throwable cause = err instanceof java.util.concurrent.CompletionException && err.getCause() != null
                    ? err.getCause() : err;
            if (cause instanceof InvalidQueryException && String.valueOf(cause.getMessage()).contains("too large")
                    && group.size() > 1) { // above batch_size_fail_threshold: its halves, each keeping its permits
                int half = group.size() / 2;
                retried.inc(2);
                send(new ArrayList<>(group.subList(0, half)), attempt);
                send(new ArrayList<>(group.subList(half, group.size())), attempt);
                return;
            }
            if (attempt >= retries) {
                done(group.size(), new IOException("Cassandra write of " + group.size() + " row(s) failed after "
                        + attempt + " retries: " + cause, cause));
                return;
            }
            long delay = Math.min(backoffMs << Math.min(attempt, 30), maxBackoffMs);
            retried.inc();
            try {
                retryTimer.schedule(() -> send(group, attempt + 1), delay, TimeUnit.MILLISECONDS);
            } catch (RuntimeException e) { // the writer is closing
                done(group.size(), e);
            }
        }

        private void done(int rows, Throwable err) {
            if (err == null) {
                written.inc(rows);
            } else {
                error.compareAndSet(null, err);
            }
            permits.release(rows);
            synchronized (landed) {
                landed.notifyAll();
            }
        }

        private void raise() throws IOException {
            Throwable e = error.get();
            if (e != null) {
                throw e instanceof IOException ? (IOException) e : new IOException(e.getMessage(), e);
            }
        }

        @Override
        public void flush(boolean endOfInput) throws IOException, InterruptedException {
            release();
            sendOpen();
            synchronized (landed) {
                while (permits.availablePermits() < maxInFlight && error.get() == null) {
                    landed.wait(100);
                }
            }
            raise();
        }

        @Override
        public void close() throws Exception {
            retryTimer.shutdownNow();
            session.close();
        }
    }
}
