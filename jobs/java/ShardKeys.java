package streamrec.flink;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.zip.CRC32;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;

/**
 * Shards: users (and items) are spread over {@code n} shards by CRC-32 of the id's UTF-8 bytes; shard {@code i} is
 * keyed in Flink by {@code keys[i]}, an integer chosen so that the n keys fall into key groups spread evenly over
 * the key-group range (so every parallelism that divides n gets an equal share). The same rule is in
 * {@code jobs/sharding.py}: Python computes the key of an erase request, Java the key of a raw event.
 */
public final class ShardKeys {
    private ShardKeys() {}

    /** n integer keys, key i in key group (2i + 1) · maxParallelism / (2n) (the middle of its n-th of the range). */
    public static int[] table(int n, int maxParallelism) {
        if (n < 1 || n > maxParallelism) {
            throw new IllegalArgumentException("shards must be in [1, max parallelism " + maxParallelism + "]: " + n);
        }
        int[] keys = new int[n];
        for (int i = 0; i < n; i++) {
            int want = (int) ((2L * i + 1) * maxParallelism / (2L * n));
            int k = 0;
            while (KeyGroupRangeAssignment.assignToKeyGroup(k, maxParallelism) != want) {
                k++;
            }
            keys[i] = k;
        }
        return keys;
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
