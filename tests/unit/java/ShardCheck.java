import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import streamrec.flink.BatchSplitter;
import streamrec.flink.ShardBatcher;
import streamrec.flink.ShardKeys;

/** Driven by tests/unit/test_batching.py: prints what the job's Java classes make of the test's inputs (stdin). */
public final class ShardCheck {
    public static void main(String[] args) throws Exception {
        String[] lines = new String(System.in.readAllBytes(), StandardCharsets.UTF_8).split("\n", -1);
        int shards = Integer.parseInt(args[0]);
        int maxParallelism = Integer.parseInt(args[1]);
        StringBuilder keys = new StringBuilder("keys");
        for (int k : ShardKeys.table(shards, maxParallelism)) {
            keys.append(' ').append(k);
        }
        System.out.println(keys);
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
