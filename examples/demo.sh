#!/usr/bin/env bash
# The main job end to end: make a small labelled image set, describe it with the paper's defaults
# (VGG16 fc7, dense, Q = 256,384,512 averaged, flips averaged) into demo/features.h5, show the file,
# then train and score linear SVMs on the descriptors (demo/model.svm.h5, demo/predictions.csv).
#
# Uses the ImageNet weights when they are in torch's cache or download.pytorch.org answers within
# 5 s; otherwise says so and uses --weights random --seed 0 (a smoke test, not real features).
# Force a choice with WEIGHTS=imagenet|random|/path/to/vgg16.pth. Run from the repository root
# (make demo does); VENV names the virtual environment (default .venv; falls back to PATH).
set -euo pipefail

DEMO=${DEMO:-demo}
bin=${VENV:-.venv}/bin
if [[ -x $bin/vggfeat ]]; then
    python=$bin/python vggfeat=$bin/vggfeat
else
    python=python3 vggfeat=vggfeat
fi

"$python" examples/make_demo_images.py "$DEMO/images"

if [[ -z ${WEIGHTS:-} ]]; then
    # Decide without hanging: the whole check, DNS included, gets 5 seconds.
    WEIGHTS=$("$python" - <<'EOF'
import sys, threading, urllib.error, urllib.request
import torchvision
from vggfeat.weights import imagenet_cache_file

cache = imagenet_cache_file("vgg16")
url = torchvision.models.get_model_weights("vgg16").IMAGENET1K_V1.url
if cache.is_file():
    print(f"ImageNet weights found in the torch cache: {cache}", file=sys.stderr)
    print("imagenet")
    sys.exit()
answer = []
def probe():
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5)
        answer.append(True)
    except urllib.error.HTTPError:
        answer.append(True)  # the server answered
    except Exception as error:
        answer.append(error)
thread = threading.Thread(target=probe, daemon=True)
thread.start()
thread.join(5)
if answer and answer[0] is True:
    print(f"ImageNet weights not cached; downloading them once (about 530 MB) from {url}", file=sys.stderr)
    print("imagenet")
else:
    print(f"NOTE: ImageNet weights are not in {cache} and {url} is unreachable "
          f"({answer[0] if answer else 'no answer in 5 s'}).\n"
          "      Running with --weights random --seed 0 instead: the pipeline runs end to end, but the\n"
          "      descriptors are NOT ImageNet features. For real ones, put that file at the path above\n"
          "      (or run WEIGHTS=/path/to/vgg16-397923af.pth make demo).", file=sys.stderr)
    print("random")
EOF
)
fi

seed=()
if [[ $WEIGHTS == random ]]; then seed=(--seed 0); fi  # (refused with other weights, which it would not change)
set -x
time "$vggfeat" extract "$DEMO/images" "$DEMO/features.h5" --weights "$WEIGHTS" ${seed[@]+"${seed[@]}"} --overwrite
"$vggfeat" info "$DEMO/features.h5"
# The transfer stage: linear SVMs on the descriptors, scored on held-out images (the paper's
# Caltech protocol, at the demo's size: 2 training images a class, the rest tested, 3 splits),
# then one model on every image and its predictions. C is fixed: 4 images a class are too few to
# choose it by cross-validation.
"$vggfeat" protocol caltech "$DEMO/features.h5" --train-per-class 2 --test-per-class 0 --splits 3 --C 1
"$vggfeat" train-svm "$DEMO/features.h5" "$DEMO/model.svm.h5" --C 1 --overwrite
"$vggfeat" predict "$DEMO/model.svm.h5" "$DEMO/features.h5" "$DEMO/predictions.csv" --overwrite
head -4 "$DEMO/predictions.csv"
