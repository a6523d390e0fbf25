package streamrec.flink;

import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.beam.runners.fnexecution.control.RemoteBundle;
import org.apache.beam.sdk.fn.data.BeamFnDataOutboundAggregator;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.fnexecution.v1.FlinkFnApi;
import org.apache.flink.python.PythonFunctionRunner;
import org.apache.flink.python.env.process.ProcessPythonEnvironmentManager;
import org.apache.flink.python.metric.process.FlinkMetricContainer;
import org.apache.flink.runtime.execution.Environment;
import org.apache.flink.runtime.memory.MemoryManager;
import org.apache.flink.runtime.state.KeyedStateBackend;
import org.apache.flink.runtime.state.OperatorStateBackend;
import org.apache.flink.streaming.api.functions.python.DataStreamPythonFunctionInfo;
import org.apache.flink.streaming.api.graph.StreamGraph;
import org.apache.flink.streaming.api.graph.StreamNode;
import org.apache.flink.streaming.api.operators.SimpleOperatorFactory;
import org.apache.flink.streaming.api.operators.StreamOperator;
import org.apache.flink.streaming.api.operators.python.process.AbstractExternalDataStreamPythonFunctionOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonCoProcessOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonKeyedCoProcessOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonKeyedProcessOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonProcessOperator;
import org.apache.flink.streaming.api.operators.python.process.timer.TimerRegistration;
import org.apache.flink.streaming.api.runners.python.beam.BeamDataStreamPythonFunctionRunner;
import org.apache.flink.streaming.api.runners.python.beam.BeamPythonFunctionRunner;

/**
 * Process-mode Python operators whose input records reach the Python worker as they arrive, not at the bundle's end.
 *
 * <p>PyFlink 2.3 hands records to its Python worker through Beam's data channel, whose JVM side
 * ({@code BeamFnDataOutboundAggregator}) sends what it buffered only when 1 MB has gathered or the bundle closes
 * (Beam's {@code data_buffer_size_limit} and {@code data_buffer_time_limit_ms} experiments, which PyFlink leaves
 * unset and offers no setting for; the time limit would also start Beam's own periodic flush in the Python worker,
 * whose output stream PyFlink writes into directly). Below 1 MB per bundle the worker therefore idles while a bundle
 * fills and then does all of it at the bundle's end, while the task thread waits; a checkpoint barrier waits too.
 *
 * <p>Here the operators' runner sends what the channel holds whenever a record arrives at least {@code intervalMs}
 * after the last send (0: after every record). A record of this job is a batch of events
 * (jobs/java/ShardBatcher), so at a trickle every batch goes at once, while at a backlog, where batches arrive
 * faster than that, they still travel together as before. Bundles, their ends (state written back, outputs
 * released), checkpoints and the worker's processing order are unchanged: only when the worker sees each record.
 * The send reaches Beam's channel by reflection (Flink 2.3.0 / Beam 2.61.0: the runner's {@code remoteBundle}, the
 * Beam {@code ActiveBundle} inside it, its {@code beamFnDataOutboundAggregator}, whose {@code flush()} is what a full
 * buffer calls).
 *
 * <p>All process-mode Python operators of a slot share one Python worker, so the job replaces every one of them in
 * its stream graph ({@link #apply}, called by {@code jobs/recommend.py}).
 */
public final class StreamedInput {
    private StreamedInput() {}

    /** Every process-mode Python operator of the graph replaced by {@link #wrap}; returns how many. */
    public static int apply(StreamGraph graph, int intervalMs) throws ReflectiveOperationException {
        int n = 0;
        for (StreamNode node : graph.getStreamNodes()) {
            if (node.getOperatorFactory() instanceof SimpleOperatorFactory<?> f && WRAPPED.contains(
                    f.getOperator().getClass())) {
                SimpleOperatorFactory<?> g = SimpleOperatorFactory.of(wrap(f.getOperator(), intervalMs));
                g.setChainingStrategy(f.getChainingStrategy());
                node.setOperatorFactory(g);
                n++;
            }
        }
        return n;
    }

    private static final Set<Class<?>> WRAPPED = Set.of(ExternalPythonKeyedProcessOperator.class,
            ExternalPythonProcessOperator.class, ExternalPythonKeyedCoProcessOperator.class,
            ExternalPythonCoProcessOperator.class);

    /** The operator PyFlink built (before it opened), as the same operator (every field copied) whose runner streams
     *  its input at most {@code intervalMs} after a record arrives. */
    public static StreamOperator<?> wrap(StreamOperator<?> op, int intervalMs) throws ReflectiveOperationException {
        if (intervalMs < 0) {
            throw new IllegalArgumentException("intervalMs must be >= 0: " + intervalMs);
        }
        StreamOperator<?> out = construct(op, intervalMs);
        for (Class<?> c = op.getClass(); c != null; c = c.getSuperclass()) {
            for (Field f : c.getDeclaredFields()) {
                if (!Modifier.isStatic(f.getModifiers())) {
                    f.setAccessible(true);
                    f.set(out, f.get(op));
                }
            }
        }
        return out;
    }

    private static StreamOperator<?> construct(StreamOperator<?> op, int intervalMs)
            throws ReflectiveOperationException {
        if (op instanceof ExternalPythonKeyedProcessOperator<?> k) {
            return new KeyedProcess<>(k.getConfiguration(), k.getPythonFunctionInfo(),
                    (RowTypeInfo) k.getInputTypeInfo(), k.getProducedType(), intervalMs);
        }
        if (op instanceof ExternalPythonProcessOperator<?, ?> p) {
            return new Process<>(p.getConfiguration(), p.getPythonFunctionInfo(), p.getInputTypeInfo(),
                    p.getProducedType(), intervalMs);
        }
        if (op instanceof ExternalPythonKeyedCoProcessOperator<?> k) {
            return new KeyedCoProcess<>(k.getConfiguration(), k.getPythonFunctionInfo(), inputType(k, "Left"),
                    inputType(k, "Right"), k.getProducedType(), intervalMs);
        }
        if (op instanceof ExternalPythonCoProcessOperator<?, ?, ?> c) {
            return new CoProcess<>(c.getConfiguration(), c.getPythonFunctionInfo(), inputType(c, "Left"),
                    inputType(c, "Right"), c.getProducedType(), intervalMs);
        }
        throw new IllegalArgumentException("not a process-mode Python operator this job uses: " + op.getClass());
    }

    @SuppressWarnings("unchecked")
    private static <T> TypeInformation<T> inputType(Object op, String side) throws ReflectiveOperationException {
        Method m = findMethod(op.getClass(), "get" + side + "InputType");
        m.setAccessible(true);
        return (TypeInformation<T>) m.invoke(op);
    }

    private static Method findMethod(Class<?> c, String name) throws NoSuchMethodException {
        for (Class<?> k = c; k != null; k = k.getSuperclass()) {
            for (Method m : k.getDeclaredMethods()) {
                if (m.getName().equals(name) && m.getParameterCount() == 0) {
                    return m;
                }
            }
        }
        throw new NoSuchMethodException(c + "." + name + "()");
    }

    /** Flink's runner as the operator built it, sending its input at most {@code intervalMs} after a record. */
    static PythonFunctionRunner streamed(PythonFunctionRunner built, int intervalMs) throws Exception {
        return new Runner((BeamDataStreamPythonFunctionRunner) built, intervalMs);
    }

    static final class Runner extends BeamDataStreamPythonFunctionRunner {
        private static final Field REMOTE_BUNDLE;
        private static final Class<?> ACTIVE_BUNDLE;
        private static final Field AGGREGATOR;
        private static final Method FLUSH;
        private static final Map<Class<?>, Field> WRAPPED_BUNDLE = new ConcurrentHashMap<>();

        static {
            try {
                REMOTE_BUNDLE = BeamPythonFunctionRunner.class.getDeclaredField("remoteBundle");
                REMOTE_BUNDLE.setAccessible(true);
                ACTIVE_BUNDLE = Class.forName("org.apache.beam.runners.fnexecution.control."
                        + "SdkHarnessClient$BundleProcessor$ActiveBundle", false, Runner.class.getClassLoader());
                AGGREGATOR = ACTIVE_BUNDLE.getDeclaredField("beamFnDataOutboundAggregator");
                AGGREGATOR.setAccessible(true);
                FLUSH = BeamFnDataOutboundAggregator.class.getDeclaredMethod("flush");
                FLUSH.setAccessible(true);
            } catch (ReflectiveOperationException e) {
                throw new IllegalStateException("PyFlink's Beam runner is not the one StreamedInput was written for "
                        + "(Flink 2.3.0, Beam 2.61.0); set input_flush_ms: -1 to run without it", e);
            }
        }

        private final long intervalNanos;
        private long lastSend = Long.MIN_VALUE / 2;

        /** The same runner: every constructor argument read back from the one the operator built. */
        @SuppressWarnings("unchecked")
        Runner(BeamDataStreamPythonFunctionRunner r, int intervalMs) throws ReflectiveOperationException {
            super((Environment) get(r, "environment"), (String) get(r, "taskName"),
                    (ProcessPythonEnvironmentManager) get(r, "environmentManager"),
                    (String) get(r, "headOperatorFunctionUrn"),
                    (List<FlinkFnApi.UserDefinedDataStreamFunction>) get(r, "userDefinedDataStreamFunctions"),
                    (FlinkMetricContainer) get(r, "flinkMetricContainer"),
                    (KeyedStateBackend<?>) get(r, "keyedStateBackend"),
                    (OperatorStateBackend) get(r, "operatorStateBackend"),
                    (TypeSerializer<?>) get(r, "keySerializer"), (TypeSerializer<?>) get(r, "namespaceSerializer"),
                    (TimerRegistration) get(r, "timerRegistration"), (MemoryManager) get(r, "memoryManager"),
                    (Double) get(r, "managedMemoryFraction"),
                    (FlinkFnApi.CoderInfoDescriptor) get(r, "inputCoderDescriptor"),
                    (FlinkFnApi.CoderInfoDescriptor) get(r, "outputCoderDescriptor"),
                    (FlinkFnApi.CoderInfoDescriptor) get(r, "timerCoderDescriptor"),
                    (Map<String, FlinkFnApi.CoderInfoDescriptor>) get(r, "sideOutputCoderDescriptors"));
            this.intervalNanos = intervalMs * 1_000_000L;
        }

        private static Object get(Object o, String name) throws ReflectiveOperationException {
            for (Class<?> c = o.getClass(); c != null; c = c.getSuperclass()) {
                try {
                    Field f = c.getDeclaredField(name);
                    f.setAccessible(true);
                    return f.get(o);
                } catch (NoSuchFieldException e) {
                    // declared further up
                }
            }
            throw new NoSuchFieldException(BeamPythonFunctionRunner.class.getName() + "." + name);
        }

        @Override
        public void process(byte[] data) throws Exception {
            super.process(data);  // into the channel's buffer (sent by Beam at 1 MB)
            long now = System.nanoTime();
            if (now - lastSend >= intervalNanos) {
                Object bundle = REMOTE_BUNDLE.get(this);
                if (bundle != null) {
                    FLUSH.invoke(aggregatorOf(bundle));  // sends what it holds; nothing when empty
                }
                lastSend = now;
            }
        }

        /** The channel of Beam's bundle inside the wrappers Beam and Flink put around it. */
        private static Object aggregatorOf(Object bundle) throws ReflectiveOperationException {
            Object b = bundle;
            for (int depth = 0; depth < 4 && b != null; depth++) {
                if (ACTIVE_BUNDLE.isInstance(b)) {
                    return AGGREGATOR.get(b);
                }
                b = wrapped(b.getClass()).get(b);
            }
            throw new IllegalStateException("no Beam ActiveBundle inside " + bundle.getClass().getName());
        }

        private static Field wrapped(Class<?> c) {
            return WRAPPED_BUNDLE.computeIfAbsent(c, k -> {
                for (Field f : k.getDeclaredFields()) {
                    if (RemoteBundle.class.isAssignableFrom(f.getType()) && !Modifier.isStatic(f.getModifiers())) {
                        f.setAccessible(true);
                        return f;
                    }
                }
                throw new IllegalStateException("a Beam bundle that wraps no other: " + k.getName());
            });
        }
    }

    public static final class KeyedProcess<OUT> extends ExternalPythonKeyedProcessOperator<OUT> {
        private static final long serialVersionUID = 1L;
        private final int intervalMs;

        public KeyedProcess(Configuration config, DataStreamPythonFunctionInfo info, RowTypeInfo in,
                            TypeInformation<OUT> out, int intervalMs) {
            super(config, info, in, out);
            this.intervalMs = intervalMs;
        }

        @Override
        public PythonFunctionRunner createPythonFunctionRunner() throws Exception {
            return streamed(super.createPythonFunctionRunner(), intervalMs);
        }

        @Override
        public <T> AbstractExternalDataStreamPythonFunctionOperator<T> copy(DataStreamPythonFunctionInfo info,
                                                                             TypeInformation<T> out) {
            return new KeyedProcess<>(config, info, (RowTypeInfo) getInputTypeInfo(), out, intervalMs);
        }
    }

    public static final class Process<IN, OUT> extends ExternalPythonProcessOperator<IN, OUT> {
        private static final long serialVersionUID = 1L;
        private final int intervalMs;

        public Process(Configuration config, DataStreamPythonFunctionInfo info, TypeInformation<IN> in,
                       TypeInformation<OUT> out, int intervalMs) {
            super(config, info, in, out);
            this.intervalMs = intervalMs;
        }

        @Override
        public PythonFunctionRunner createPythonFunctionRunner() throws Exception {
            return streamed(super.createPythonFunctionRunner(), intervalMs);
        }

        @Override
        public <T> AbstractExternalDataStreamPythonFunctionOperator<T> copy(DataStreamPythonFunctionInfo info,
                                                                             TypeInformation<T> out) {
            return new Process<>(config, info, getInputTypeInfo(), out, intervalMs);
        }
    }

    public static final class KeyedCoProcess<OUT> extends ExternalPythonKeyedCoProcessOperator<OUT> {
        private static final long serialVersionUID = 1L;
        private final int intervalMs;

        public KeyedCoProcess(Configuration config, DataStreamPythonFunctionInfo info,
                              TypeInformation<org.apache.flink.types.Row> in1,
                              TypeInformation<org.apache.flink.types.Row> in2, TypeInformation<OUT> out,
                              int intervalMs) {
            super(config, info, in1, in2, out);
            this.intervalMs = intervalMs;
        }

        @Override
        public PythonFunctionRunner createPythonFunctionRunner() throws Exception {
            return streamed(super.createPythonFunctionRunner(), intervalMs);
        }

        @Override
        public <T> AbstractExternalDataStreamPythonFunctionOperator<T> copy(DataStreamPythonFunctionInfo info,
                                                                             TypeInformation<T> out) {
            return new KeyedCoProcess<>(config, info, getLeftInputType(), getRightInputType(), out, intervalMs);
        }
    }

    public static final class CoProcess<IN1, IN2, OUT> extends ExternalPythonCoProcessOperator<IN1, IN2, OUT> {
        private static final long serialVersionUID = 1L;
        private final int intervalMs;

        public CoProcess(Configuration config, DataStreamPythonFunctionInfo info, TypeInformation<IN1> in1,
                         TypeInformation<IN2> in2, TypeInformation<OUT> out, int intervalMs) {
            super(config, info, in1, in2, out);
            this.intervalMs = intervalMs;
        }

        @Override
        public PythonFunctionRunner createPythonFunctionRunner() throws Exception {
            return streamed(super.createPythonFunctionRunner(), intervalMs);
        }

        @Override
        public <T> AbstractExternalDataStreamPythonFunctionOperator<T> copy(DataStreamPythonFunctionInfo info,
                                                                             TypeInformation<T> out) {
            return new CoProcess<>(config, info, getLeftInputType(), getRightInputType(), out, intervalMs);
        }
    }
}
