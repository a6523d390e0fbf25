import java.io.BufferedInputStream;
import java.io.DataInputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.utils.Utils;

/**
 * The benchmark's paced load generator on Kafka's own Java client (streamrec/bench/load.py runs it; its Python
 * fallback does the same with kafka-python). What it sends is what the Python one sends: the lines of a stream file
 * in order, paced at R lines/s (0: unpaced) for at most S seconds, key = user id, record timestamp = event time, to
 * the partition Kafka's default partitioner picks for the key (murmur2; unkeyed lines round-robin by line number),
 * with the producer settings load.py's PRODUCER gives both forms.
 *
 * <p>Why Java: kafka-python costs ~240 µs of CPU per message at 1,000 messages/s (its sender thread wakes per
 * request), and that CPU is taken from the system under test on the bench's 2-core machine.
 *
 * <p>Usage: {@code LoadGen STREAM TOPIC BOOTSTRAP RATE SECONDS PARTITIONS OUT CLIENT_PROPERTIES} (the producer
 * settings and the services profile's security settings, as the job's Kafka clients get them) with STREAM the binary form
 * load.py writes (big-endian: int count; per line int keyLength (-1: none), key, long ts, int length, payload).
 * Writes OUT (little-endian float64 per line: send time in seconds on CLOCK_MONOTONIC, as Python's
 * {@code time.monotonic()}; NaN if not sent) and prints one summary line: "attempted acked failed send_s total_s".
 */
public final class LoadGen {
    private LoadGen() {}

    record Line(byte[] key, long ts, byte[] value) {}

    static List<Line> read(String path) throws IOException {
        try (DataInputStream in = new DataInputStream(new BufferedInputStream(new FileInputStream(path), 1 << 20))) {
            int n = in.readInt();
            List<Line> lines = new ArrayList<>(n);
            for (int i = 0; i < n; i++) {
                int kl = in.readInt();
                byte[] key = null;
                if (kl >= 0) {
                    key = in.readNBytes(kl);
                }
                long ts = in.readLong();
                byte[] value = in.readNBytes(in.readInt());
                lines.add(new Line(key, ts, value));
            }
            return lines;
        }
    }

    /** The partition Kafka's default partitioner gives a keyed record; unkeyed lines by line number. */
    static int partitionOf(byte[] key, int line, int partitions) {
        return key == null ? line % partitions : Utils.toPositive(Utils.murmur2(key)) % partitions;
    }

    public static void main(String[] args) throws Exception {
        List<Line> lines = read(args[0]);
        String topic = args[1];
        double rate = Double.parseDouble(args[3]);
        double seconds = Double.parseDouble(args[4]);
        int partitions = Integer.parseInt(args[5]);
        Properties p = new Properties();
        try (FileInputStream in = new FileInputStream(args[7])) {  // load.py's PRODUCER settings, and security
            p.load(in);
        }
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args[2]);
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "false");  // as kafka-python's default (acks=1 needs it off)
        double[] sentAt = new double[lines.size()];
        java.util.Arrays.fill(sentAt, Double.NaN);
        AtomicLong acked = new AtomicLong();
        AtomicLong failed = new AtomicLong();
        int n = 0;
        long start;
        double sendS;
        try (KafkaProducer<byte[], byte[]> producer =
                     new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
            producer.partitionsFor(topic);  // metadata before the clock starts (kafka-python waits in its first send)
            start = System.nanoTime();
            long deadline = seconds > 0 ? start + (long) (seconds * 1e9) : Long.MAX_VALUE;
            for (int i = 0; i < lines.size(); i++) {
                long now = System.nanoTime();
                if (now >= deadline) {
                    break;
                }
                if (rate > 0 && i % 10 == 0) {
                    long ahead = start + (long) (i / rate * 1e9) - now;
                    if (ahead > 0) {
                        Thread.sleep(ahead / 1_000_000, (int) (ahead % 1_000_000));
                    }
                }
                Line l = lines.get(i);
                sentAt[i] = System.nanoTime() / 1e9;
                producer.send(new ProducerRecord<>(topic, partitionOf(l.key(), i, partitions), l.ts(), l.key(), l.value()),
                        (meta, err) -> (err == null ? acked : failed).incrementAndGet());
                n = i + 1;
            }
            sendS = (System.nanoTime() - start) / 1e9;
            producer.flush();
        }
        double totalS = (System.nanoTime() - start) / 1e9;
        ByteBuffer out = ByteBuffer.allocate(8 * sentAt.length).order(ByteOrder.LITTLE_ENDIAN);
        for (double t : sentAt) {
            out.putDouble(t);
        }
        out.flip();
        try (FileChannel ch = FileChannel.open(Path.of(args[6]), StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                StandardOpenOption.TRUNCATE_EXISTING)) {
            while (out.hasRemaining()) {
                ch.write(out);
            }
        }
        System.out.println(n + " " + acked.get() + " " + failed.get() + " " + sendS + " " + totalS);
    }
}
