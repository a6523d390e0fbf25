import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import streamrec.flink.BatchSplitter;
import streamrec.flink.ShardBatcher;
import streamrec.flink.ShardKeys;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;

/** Driven by tests/unit/test_batching.py: prints what the job's Java classes make of the test's inputs (stdin). */
public final class ShardCheck {
    public static void main(String[] args) throws Exception {
        String[] lines = new String(System.in.readAllBytes(), StandardCharsets.UTF_8).split("\n", -1);
        int shards = Integer.parseInt(args[0]);
        int maxParallelism = Integer.parseInt(args[1]);
        for (boolean legacy : new boolean[] {false, true}) {
            // per key: the key group of the key as the batcher keys it (Integer) and as the Python operators do (Row)
            StringBuilder keys = new StringBuilder(legacy ? "legacy" : "keys");
            for (int k : ShardKeys.table(shards, maxParallelism, legacy)) {
                keys.append(' ').append(k).append(':')
                        .append(KeyGroupRangeAssignment.assignToKeyGroup(k, maxParallelism)).append(':')
                        .append(KeyGroupRangeAssignment.assignToKeyGroup(ShardKeys.rowKey(k), maxParallelism));
            }
            System.out.println(keys);
        }
        // the restore check: restored tables (";"-separated, "" = none recorded) against this job's and the legacy one
        for (String[] c : new String[][] {{"[1, 2]", "[1, 2]", "[9, 8]"}, {"", "[9, 8]", "[9, 8]"},
                                          {"", "[1, 2]", "[9, 8]"}, {"[1, 2];[1, 2]", "[1, 2]", "[9, 8]"},
                                          {"[9, 8]", "[1, 2]", "[9, 8]"}, {"[1, 2];[7]", "[1, 2]", "[9, 8]"}}) {
            List<String> restored = c[0].isEmpty() ? List.of() : List.of(c[0].split(";"));
            System.out.println("mismatch " + c[0] + " | " + c[1] + " -> " + ShardBatcher.mismatch(restored, c[1], c[2]));
        }
        List<byte[]> raws = new ArrayList<>();
        for (String line : lines) {  // hex of one raw event per line
            if (line.isEmpty()) {
                continue;
            }
            byte[] raw = HexFormat.of().parseHex(line);
            raws.add(raw);
            String user = ShardKeys.userId(raw);
            String shard = user == null ? "-" : Integer.toString(ShardKeys.shardOf(user, shards));
            System.out.println("user " + (user == null ? "-" : HexFormat.of().formatHex(
                    user.getBytes(StandardCharsets.UTF_8))) + " " + shard);
        }
        System.out.println("frame " + HexFormat.of().formatHex(ShardBatcher.frame(7, raws)));
        List<String> parts = new ArrayList<>();
        new BatchSplitter().flatMap("a\nb" + BatchSplitter.SEP + "k\n" + BatchSplitter.SEP + "c",
                new org.apache.flink.util.Collector<String>() {
                    public void collect(String s) { parts.add(s); }
                    public void close() {}
                });
        System.out.println("split " + parts.size() + " " + String.join("|", parts).replace("\n", "\\n"));
    }
}
