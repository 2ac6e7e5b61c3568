"""The values that options take: architectures, scales, precisions, decoders, stored dtypes, the
SVM's C values and losses.

They live apart from the modules that use them, which import torch or scikit-learn (seconds), so
that the commands' options are declared without them: ``vggfeat extract --help``, a mistyped
option and shell completion answer at once.
"""

# torchvision's VGGs: the configurations with ImageNet weights.
ARCHITECTURES = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
# The paper's Table 1, A to E (A-LRN and C built by vggfeat.architectures), then torchvision's BN variants.
PAPER_ORDER = ("vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19")
ALL_ARCHITECTURES = (*PAPER_ORDER, "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")

# The paper's scales Q for dense evaluation (Sec. 4.2, multi-scale testing).
PAPER_SCALES = (256, 384, 512)

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
DECODERS = ("pil", "torchvision", "nvjpeg", "nvimgcodec")
DECODE_IN = ("auto", "threads", "processes")
AUTOTUNES = ("auto", "on", "off")
# The stored type of /features.
DTYPES = ("float32", "float16")

# The linear SVM's: the values of C that cross-validation tries, and liblinear's losses.
DEFAULT_C_GRID = (0.1, 1.0, 10.0, 100.0)
LOSSES = ("squared_hinge", "hinge")
SOLVERS = ("liblinear", "lbfgs")
