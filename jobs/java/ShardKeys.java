package streamrec.flink;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.zip.CRC32;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.streaming.api.functions.python.KeyByKeySelector;
import org.apache.flink.types.Row;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;

/**
 * Shards: users (and items) are spread over {@code n} shards by CRC-32 of the id's UTF-8 bytes; shard {@code i} is
 * keyed in Flink by {@code keys[i]}, an integer chosen so that the n keys fall into key groups spread evenly over
 * the key-group range (so every parallelism that divides n gets an equal share). The same rule is in
 * {@code jobs/batching.py}: Python computes the key of an erase request, Java the key of a raw event.
 *
 * <p>A key travels in two forms: the batcher ({@link ShardBatcher}) is keyed by the {@code Integer}, the Python
 * operators by {@code Row(key)} (PyFlink's {@code KeyByKeySelector}), whose hash differs. The balanced table puts
 * both forms of key i in its key group. The legacy table (streamrec before 2026-12-03) placed the Integer only, so
 * the Python operators' shards were spread unevenly: 5 and 3 of 8 shards at parallelism 2. It stays for state
 * written with it (a checkpoint's keyed state lives under its keys).
 */
public final class ShardKeys {
    private ShardKeys() {}

    /** n integer keys, key i in key group (2i + 1) · maxParallelism / (2n) (the middle of its n-th of the range), as
     *  an Integer and as Row(key); legacy: as an Integer only (the table before 2026-12-03). */
    public static int[] table(int n, int maxParallelism, boolean legacy) {
        if (n < 1 || n > maxParallelism) {
            throw new IllegalArgumentException("shards must be in [1, max parallelism " + maxParallelism + "]: " + n);
        }
        int[] keys = new int[n];
        for (int i = 0; i < n; i++) {
            int want = (int) ((2L * i + 1) * maxParallelism / (2L * n));
            int k = 0;
            while (KeyGroupRangeAssignment.assignToKeyGroup(k, maxParallelism) != want
                    || !legacy && KeyGroupRangeAssignment.assignToKeyGroup(rowKey(k), maxParallelism) != want) {
                k++;
            }
            keys[i] = k;
        }
        return keys;
    }

    /** The key object the Python operators are keyed by: what PyFlink's {@code KeyByKeySelector}, the selector
     *  {@code jobs/recommend.py} keys them with, makes of a Row(shard key, batch) record (called, not mirrored: the
     *  table follows whatever this PyFlink does). Needs flink-python on the classpath, as the job's client has. */
    public static Row rowKey(int key) {
        return new KeyByKeySelector().getKey(Row.of(key, null));
    }

    public static int shardOf(String id, int n) {
        CRC32 crc = new CRC32();
        crc.update(id.getBytes(StandardCharsets.UTF_8));
        return (int) (crc.getValue() % n);
    }

    /** The top-level "user_id" string of a JSON object, or null (not JSON, no such string: the parser downstream
     *  rejects such a message with its reason; it goes to shard 0). */
    public static String userId(byte[] raw) {
        try (JsonParser p = FACTORY.createParser(raw)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            String found = null;
            JsonToken t;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                JsonToken v = p.nextToken();
                if ("user_id".equals(name) && v == JsonToken.VALUE_STRING) {
                    found = p.getText();
                } else {
                    p.skipChildren();
                }
            }
            return found;
        } catch (IOException | RuntimeException e) {
            return null;
        }
    }

    private static final JsonFactory FACTORY = new JsonFactory();

    /** Raw event bytes → the shard key of its user. */
    public static final class UserShard implements KeySelector<byte[], Integer> {
        private static final long serialVersionUID = 1L;
        private final int[] keys;

        public UserShard(int[] keys) {
            this.keys = keys.clone();
        }

        @Override
        public Integer getKey(byte[] raw) {
            String user = userId(raw);
            return keys[user == null ? 0 : shardOf(user, keys.length)];
        }
    }
}
