"""What TensorRT's ONNX parser accepts, as data for ``crnet.export.lint``.

Source: onnx/onnx-tensorrt ``docs/operators.md`` ("Supported ONNX Operators"), branch
``10.1-GA`` (commit 96e7811, "TensorRT 10.0 supports operators in the inclusive range of
opset 9 to opset 20"), read and transcribed by hand. TensorRT 11 additions come from the
NVIDIA/TensorRT release notes: 11.0 "Added support for Swish operator" (and the custom
TRT_Attention / TRT_MoE / TRT_KVCacheUpdate ops), 11.2 "Added support for the DFT
operator and 5D GridSample", 11.5 "Added support for ONNX opset 25"; NVIDIA's ONNX opset
guide for 11.x lists maximum opset 25, minimum 9.

Only the restrictions that a CRNet-like graph can plausibly hit are encoded as rules in
``crnet.export.lint``; the rest is kept here as text for the report.
"""

from __future__ import annotations


def _op_names(text: str) -> frozenset[str]:
    """Whitespace-separated operator names -> a frozenset."""
    return frozenset(text.split())


SOURCE = (
    "onnx/onnx-tensorrt docs/operators.md @ 10.1-GA (96e7811); "
    "NVIDIA/TensorRT release notes 11.0, 11.2, 11.5; TensorRT ONNX opset guide 11.x"
)

# (min opset, max opset) of the default ONNX domain the parser documents.
OPSET_RANGE: dict[str, tuple[int, int]] = {"tensorrt-10": (9, 20), "tensorrt-11": (9, 25)}

# Operators marked "Y" in onnx-tensorrt docs/operators.md (TensorRT 10.1).
SUPPORTED_TRT10: frozenset[str] = _op_names("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization
LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""")

# Added by TensorRT 11.x parsers (release notes).
ADDED_TRT11: frozenset[str] = frozenset({"Swish", "DFT"})

# Operators marked "N" in the same table: named explicitly so the message can say so.
UNSUPPORTED: frozenset[str] = _op_names("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow
Col2Im CenterCropPad Compress ConcatFromSequence ConvInteger Det DynamicQuantizeLinear
HammingWindow HannWindow ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix
Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement
QLinearConv QLinearMatMul RegexFullMatch STFT SequenceAt SequenceConstruct SequenceEmpty
SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss
SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""")

# Control flow: the parser accepts it, this project's contract forbids it (unrolled graphs).
CONTROL_FLOW: frozenset[str] = frozenset({"Loop", "If", "Scan"})

# Resize restrictions (operators.md, Resize row).
RESIZE_MODES: frozenset[str] = frozenset({"nearest", "linear"})
RESIZE_COORDINATE_MODES: frozenset[str] = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
RESIZE_NEAREST_MODES: frozenset[str] = frozenset(
    {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
)
RESIZE_ASPECT_POLICIES: frozenset[str] = frozenset({"stretch"})

# Inputs that the table says "must be an initializer" (op -> input index, what).
CONSTANT_INPUTS: dict[str, tuple[int, str]] = {
    "CumSum": (1, "axis"),
    "Pad": (3, "axes"),
    "ReduceL1": (1, "axes"), "ReduceL2": (1, "axes"), "ReduceLogSum": (1, "axes"),
    "ReduceLogSumExp": (1, "axes"), "ReduceMax": (1, "axes"), "ReduceMean": (1, "axes"),
    "ReduceMin": (1, "axes"), "ReduceProd": (1, "axes"), "ReduceSum": (1, "axes"),
    "ReduceSumSquare": (1, "axes"),
    "Slice": (3, "axes"),
    "Squeeze": (1, "axes"),
    "Unsqueeze": (1, "axes"),
    "Dropout": (2, "training_mode"),
}

# Quantization rules (FACTS.md, "TensorRT's Q/DQ rules"; operators.md Q/DQ rows).
QUANTIZED_TYPES: frozenset[str] = frozenset({"INT8", "FLOAT8E4M3FN", "INT4"})
# Per-channel weight axis expected per consumer op (the output-channel axis of the weight);
# Gemm and MatMul depend on transB and are decided in export.lint.
WEIGHT_CHANNEL_AXIS: dict[str, int] = {"Conv": 0, "ConvTranspose": 1}
