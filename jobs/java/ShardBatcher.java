package streamrec.flink;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.TreeSet;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.runtime.state.FunctionInitializationContext;
import org.apache.flink.runtime.state.FunctionSnapshotContext;
import org.apache.flink.streaming.api.checkpoint.CheckpointedFunction;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.SingleOutputStreamOperator;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.operators.TimestampedCollector;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Groups raw events by shard into batch records, in the JVM, so the Python operator downstream is called once per
 * batch instead of once per event (each Python call crosses JVM → Python, and each user's state would be written back
 * to the JVM by its own gRPC round trip).
 *
 * <p>Keyed by shard key ({@link ShardKeys}). A batch is emitted when it holds {@code maxEvents} events, when the
 * oldest buffered event has waited {@code maxDelayMs} of processing time, and when the watermark reaches the earliest
 * event time in it (an event-time timer; timers fire before the operator forwards the watermark). So no watermark
 * overtakes a buffered event: downstream, event time is as if the events had not been batched (debounce timers,
 * the item operator's event-time order), and the final watermark of a bounded input flushes everything. The buffer
 * lives in Flink keyed state, so it is part of every checkpoint: nothing buffered is lost or repeated on recovery.
 *
 * <p>A batch carries the newest timestamp of its events (the Kafka record timestamps = event times), whatever
 * flushed it: a batch sent by a timer would otherwise carry none (processing time) or Long.MAX_VALUE (the end-of-input
 * timer), and the outputs made from it would reach Kafka with that timestamp (the broker refuses far-future ones).
 *
 * <p>Batch frame: "SRB1", int32 shard key, int32 n, then n × (int32 length, bytes), big-endian. It leaves as
 * Row(shard key, frame), the record layout PyFlink's keyed Python operators read (what its own key_by writes with a
 * Python map first): the job keys the batches in the JVM, with no Python operator in between.
 *
 * <p>The shard key table the job runs with is kept in operator state: a job restored from state keyed by another
 * table (another {@code batching.shards} or {@code batching.key_table}) stops with an error that says so, instead of
 * finding every user's state missing. State from before the table was kept was keyed by the legacy table.
 */
public final class ShardBatcher extends KeyedProcessFunction<Integer, byte[], Row> implements CheckpointedFunction {
    private static final long serialVersionUID = 1L;
    static final byte[] MAGIC = {'S', 'R', 'B', '1'};
    /** Row(f0 INT shard key, f1 byte[] frame). */
    public static final TypeInformation<Row> BATCH_TYPE =
            Types.ROW(Types.INT, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);

    private final int maxEvents;
    private final long maxDelayMs;
    private final String table;  // the shard keys this job's state is keyed by
    private final String legacyTable;  // the keys state from before the table was recorded is keyed by
    private transient ListState<String> recorded;
    private transient ListState<byte[]> buffer;
    private transient ValueState<Integer> count;
    private transient ValueState<Long> timer;
    private transient ValueState<Long> newest;
    private transient ValueState<Long> earliest;

    public ShardBatcher(int maxEvents, long maxDelayMs, int[] shardKeys, int[] legacyKeys) {
        this.maxEvents = Math.max(1, maxEvents);
        this.maxDelayMs = Math.max(0, maxDelayMs);
        this.table = Arrays.toString(shardKeys);
        this.legacyTable = Arrays.toString(legacyKeys);
    }

    /** keyBy(shard of the event's user) → batcher, with its output type: for the Python job (one py4j call).
     *  {@code legacyKeys}: the table of state written before the table was recorded ({@link ShardKeys#table}). */
    public static SingleOutputStreamOperator<Row> byShard(DataStream<byte[]> events, int[] shardKeys,
                                                          int[] legacyKeys, int maxEvents, long maxDelayMs) {
        return events.keyBy(new ShardKeys.UserShard(shardKeys), Types.INT)
                .process(new ShardBatcher(maxEvents, maxDelayMs, shardKeys, legacyKeys), BATCH_TYPE);
    }

    /** All records of {@code records} in batches of one key ({@code key}, any int: nothing is keyed by it downstream),
     *  with the same rules: for a low-volume stream that each Python call should take many records of (the job's CF
     *  feedback topic, whose records are broadcast to every user-operator instance). One subtask does the batching. */
    public static SingleOutputStreamOperator<Row> single(DataStream<byte[]> records, int key, int maxEvents,
                                                         long maxDelayMs) {
        int[] keys = {key};
        return records.keyBy(new Fixed(key), Types.INT)
                .process(new ShardBatcher(maxEvents, maxDelayMs, keys, keys), BATCH_TYPE);
    }

    /** Every record to one key. */
    public static final class Fixed implements KeySelector<byte[], Integer> {
        private static final long serialVersionUID = 1L;
        private final int key;

        public Fixed(int key) {
            this.key = key;
        }

        @Override
        public Integer getKey(byte[] value) {
            return key;
        }
    }

    @Override
    public void initializeState(FunctionInitializationContext ctx) throws Exception {
        recorded = ctx.getOperatorStateStore().getUnionListState(new ListStateDescriptor<>("shard-keys", Types.STRING));
        if (ctx.isRestored()) {
            String wrong = mismatch(recorded.get(), table, legacyTable);
            if (wrong != null) {
                throw new IllegalStateException(wrong);
            }
        }
        recorded.update(List.of(table));
    }

    @Override
    public void snapshotState(FunctionSnapshotContext ctx) {}  // the table recorded at start is in every snapshot

    /** Null if restored state recorded with {@code restored} (none: before tables were recorded, so
     *  {@code legacy}) is keyed by {@code table}; else why not. */
    public static String mismatch(Iterable<String> restored, String table, String legacy) {
        TreeSet<String> tables = new TreeSet<>();
        restored.forEach(tables::add);
        if (tables.isEmpty()) {
            tables.add(legacy);
        }
        if (tables.size() == 1 && tables.contains(table)) {
            return null;
        }
        return "the restored state is keyed by shard keys " + String.join(" / ", tables) + ", this job by "
                + table + ": restore it with the batching.shards and batching.key_table it was written with ("
                + "state from streamrec before 2026-12-03 was written with batching.key_table: legacy)";
    }

    @Override
    public void open(OpenContext ctx) {
        buffer = getRuntimeContext().getListState(
                new ListStateDescriptor<>("buffer", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Types.INT));
        timer = getRuntimeContext().getState(new ValueStateDescriptor<>("timer", Types.LONG));
        newest = getRuntimeContext().getState(new ValueStateDescriptor<>("newest", Types.LONG));
        earliest = getRuntimeContext().getState(new ValueStateDescriptor<>("earliest", Types.LONG));
    }

    @Override
    public void processElement(byte[] value, Context ctx, Collector<Row> out) throws Exception {
        buffer.add(value);
        Long ts = ctx.timestamp();
        if (ts != null) {
            Long seen = newest.value();
            if (seen == null || ts > seen) {
                newest.update(ts);
            }
            Long first = earliest.value();
            if (first == null || ts < first) {  // flush when the watermark reaches the earliest buffered event
                earliest.update(ts);
                ctx.timerService().registerEventTimeTimer(ts);
            }
        } else {
            ctx.timerService().registerEventTimeTimer(Long.MAX_VALUE);  // no event time: at the end of the input
        }
        Integer n = count.value();
        int now = n == null ? 1 : n + 1;
        if (now >= maxEvents) {
            flush(ctx.getCurrentKey(), out);
            return;
        }
        count.update(now);
        if (n == null) {  // first event of a new batch
            long at = ctx.timerService().currentProcessingTime() + maxDelayMs;
            ctx.timerService().registerProcessingTimeTimer(at);
            timer.update(at);
        }
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        if (count.value() != null) {
            flush(ctx.getCurrentKey(), out);
        }
    }

    private void flush(int key, Collector<Row> out) throws Exception {
        List<byte[]> events = new ArrayList<>();
        for (byte[] e : buffer.get()) {
            events.add(e);
        }
        Long ts = newest.value();
        buffer.clear();
        count.clear();
        timer.clear();  // a pending processing-time timer finds count empty and does nothing
        newest.clear();
        earliest.clear();
        if (out instanceof TimestampedCollector) {
            TimestampedCollector<Row> stamped = (TimestampedCollector<Row>) out;
            if (ts != null) {
                stamped.setAbsoluteTimestamp(ts);
            } else {
                stamped.eraseTimestamp();
            }
        }
        out.collect(Row.of(key, frame(key, events)));
    }

    /** The batch frame of {@code events} for shard key {@code key} (see the class comment). */
    public static byte[] frame(int key, List<byte[]> events) {
        int bytes = 12;
        for (byte[] e : events) {
            bytes += 4 + e.length;
        }
        ByteBuffer frame = ByteBuffer.allocate(bytes);
        frame.put(MAGIC).putInt(key).putInt(events.size());
        for (byte[] e : events) {
            frame.putInt(e.length).put(e);
        }
        return frame.array();
    }
}
