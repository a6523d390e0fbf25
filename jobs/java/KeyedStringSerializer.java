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
 */
public final class KeyedStringSerializer implements KafkaRecordSerializationSchema<String> {
    private static final long serialVersionUID = 1L;

    private final String topic;

    public KeyedStringSerializer(String topic) {
        this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(String element, KafkaSinkContext context, Long timestamp) {
        int nl = element.indexOf('\n');
        if (nl < 0) {
            return new ProducerRecord<>(topic, null, timestamp, null, element.getBytes(StandardCharsets.UTF_8));
        }
        byte[] key = element.substring(0, nl).getBytes(StandardCharsets.UTF_8);
        byte[] value = nl == element.length() - 1 ? null : element.substring(nl + 1).getBytes(StandardCharsets.UTF_8);
        return new ProducerRecord<>(topic, null, timestamp, key, value);
    }
}
