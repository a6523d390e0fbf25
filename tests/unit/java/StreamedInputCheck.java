import java.util.List;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.python.DataStreamPythonFunctionInfo;
import org.apache.flink.streaming.api.graph.StreamGraph;
import org.apache.flink.streaming.api.graph.StreamNode;
import org.apache.flink.streaming.api.operators.ChainingStrategy;
import org.apache.flink.streaming.api.operators.StreamOperator;
import org.apache.flink.streaming.api.operators.python.process.AbstractExternalDataStreamPythonFunctionOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonCoProcessOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonKeyedCoProcessOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonKeyedProcessOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonProcessOperator;
import org.apache.flink.table.functions.python.PythonEnv;
import org.apache.flink.table.functions.python.PythonFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.OutputTag;
import streamrec.flink.StreamedInput;

/** Driven by tests/unit/test_job_jar.py: prints what StreamedInput makes of each Python operator type, of Beam
 *  and of a stream graph, one "key value" line per fact. */
public final class StreamedInputCheck {
    static final class Fn implements PythonFunction {
        public byte[] getSerializedPythonFunction() { return new byte[] {1, 2, 3}; }
        public PythonEnv getPythonEnv() { return new PythonEnv(PythonEnv.ExecType.PROCESS); }
    }

    public static void main(String[] args) throws Exception {
        Configuration conf = new Configuration();
        conf.setString("python.fn-execution.bundle.size", "7");
        DataStreamPythonFunctionInfo info = new DataStreamPythonFunctionInfo(new Fn(), 0);
        RowTypeInfo row = new RowTypeInfo(Types.INT, Types.PRIMITIVE_ARRAY(Types.BYTE));
        TypeInformation<Row> rowType = row;
        List<AbstractExternalDataStreamPythonFunctionOperator<?>> ops = List.of(
                new ExternalPythonKeyedProcessOperator<>(conf, info, row, Types.STRING),
                new ExternalPythonProcessOperator<>(conf, info, Types.STRING, Types.STRING),
                new ExternalPythonKeyedCoProcessOperator<>(conf, info, rowType, rowType, Types.STRING),
                new ExternalPythonCoProcessOperator<>(conf, info, Types.STRING, Types.LONG, Types.STRING));
        OutputTag<String> tag = new OutputTag<>("side", Types.STRING);
        for (AbstractExternalDataStreamPythonFunctionOperator<?> op : ops) {
            op.addSideOutputTags(List.of(tag));
            StreamOperator<?> w = StreamedInput.wrap(op, 1);
            AbstractExternalDataStreamPythonFunctionOperator<?> x = (AbstractExternalDataStreamPythonFunctionOperator<?>) w;
            String name = op.getClass().getSimpleName();
            System.out.println(name + " wrapped " + w.getClass().getName());
            System.out.println(name + " subclass " + op.getClass().isInstance(w));
            System.out.println(name + " same " + (x.getConfiguration() == op.getConfiguration()) + " "
                    + (x.getPythonFunctionInfo() == op.getPythonFunctionInfo()) + " "
                    + x.getProducedType().equals(op.getProducedType()) + " " + x.getSideOutputTags());
            System.out.println(name + " copy " + x.copy(info, Types.LONG).getClass().getName());
        }
        try {
            StreamedInput.wrap(ops.get(0), -1);
            System.out.println("negative accepted");
        } catch (IllegalArgumentException e) {
            System.out.println("negative refused");
        }

        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        ExternalPythonProcessOperator<String, String> py = new ExternalPythonProcessOperator<>(conf, info, Types.STRING, Types.STRING);
        env.fromData("a", "b").transform("py", Types.STRING, py).map(v -> v).returns(Types.STRING).print();
        StreamGraph graph = env.getStreamGraph();
        for (StreamNode node : graph.getStreamNodes()) {
            if (node.getOperatorName().equals("py")) {
                node.getOperatorFactory().setChainingStrategy(ChainingStrategy.HEAD);
            }
        }
        System.out.println("applied " + StreamedInput.apply(graph, 1));
        for (StreamNode node : graph.getStreamNodes()) {
            if (node.getOperatorName().equals("py")) {
                System.out.println("graph " + node.getOperator().getClass().getName() + " "
                        + node.getOperatorFactory().getChainingStrategy());
            }
        }
        System.out.println("applied again " + StreamedInput.apply(graph, 1));
    }
}
