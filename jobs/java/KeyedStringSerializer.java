package streamrec.flink;

import java.nio.charset.StandardCharsets;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;

/**
 * Keyed Kafka records from the Python job: the string "KEY\nVALUE" becomes a record with that key and value, and
 * "KEY\n" a tombstone (null value) that erases the key from a compacted topic. A string without a newline is written
 * unkeyed.
 *
 * <p>Why this is Java: PyFlink's KafkaSink can take neither the record key from the element nor write a null value
 * (its schemas turn a missing field into an empty byte array, which compaction does not treat as a deletion).
 *
 * <p>Records carry the element's event time, or with {@code wallClock} none, so the producer stamps its send time: the
 * job's CF topic, read back by the job, must not hold its watermark back (its records' event times are those of the
 * item operator's input, behind the job's own watermark).
 */
public final class KeyedStringSerializer implements KafkaRecordSerializationSchema<String> {
    private static final long serialVersionUID = 1L;

    private final String topic;
    private final boolean wallClock;

    public KeyedStringSerializer(String topic) {
        this(topic, false);
    }

    public KeyedStringSerializer(String topic, boolean wallClock) {
        this.topic = topic;
        this.wallClock = wallClock;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(String element, KafkaSinkContext context, Long eventTime) {
        Long timestamp = wallClock ? null : eventTime;
        int nl = element.indexOf('\n');
        if (nl < 0) {
            return new ProducerRecord<>(topic, null, timestamp, null, element.getBytes(StandardCharsets.UTF_8));
        }
        byte[] key = element.substring(0, nl).getBytes(StandardCharsets.UTF_8);
        byte[] value = nl == element.length() - 1 ? null : element.substring(nl + 1).getBytes(StandardCharsets.UTF_8);
        return new ProducerRecord<>(topic, null, timestamp, key, value);
    }
}
