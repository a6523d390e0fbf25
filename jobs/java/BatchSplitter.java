package streamrec.flink;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.SingleOutputStreamOperator;
import org.apache.flink.util.Collector;

/**
 * The Python operators emit their outputs for a whole batch as one string, the records joined by U+001E (record
 * separator; JSON never holds it unescaped): this splits them back into one record each, in the JVM, for the sinks.
 */
public final class BatchSplitter implements FlatMapFunction<String, String> {
    private static final long serialVersionUID = 1L;
    public static final char SEP = '\u001e';

    public static SingleOutputStreamOperator<String> split(DataStream<String> batches) {
        return batches.flatMap(new BatchSplitter(), Types.STRING);
    }

    @Override
    public void flatMap(String batch, Collector<String> out) {
        int start = 0;
        int n = batch.length();
        while (start < n) {
            int end = batch.indexOf(SEP, start);
            if (end < 0) {
                end = n;
            }
            if (end > start) {
                out.collect(batch.substring(start, end));
            }
            start = end + 1;
        }
    }
}
