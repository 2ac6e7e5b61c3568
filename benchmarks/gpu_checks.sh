#!/usr/bin/env bash
# The GPU checks and measurements of the GPU-throughput work, in the order to run them on a lent
# GPU machine. Results go to RESULTS.md by hand, with the device, the command and the date.
# Durations seen on an H100 (fourth session): every bench_extract run in the paper setting takes
# 1.5-3 minutes, most of it cuDNN autotuning its batch shapes (model only, then end to end); so
# give each step its own 10-minute command, and put long logs under $OUT.
#
#   bash benchmarks/gpu_checks.sh session    # a session's 15 minutes of device time: the open targets, then why (< 9.5 min)
#   bash benchmarks/gpu_checks.sh first      # first, if time is short: the latest changes measured (< 9 min)
#   bash benchmarks/gpu_checks.sh network    # the network alone: eager, fused conv+ReLU, torch.compile, CUDA graph
#   bash benchmarks/gpu_checks.sh tests      # correctness first: tests/test_gpu.py (minutes: fp32 autotuning)
#   bash benchmarks/gpu_checks.sh paper      # paper setting: threads and processes; without autotuning
#   bash benchmarks/gpu_checks.sh nvjpeg     # paper setting, nvJPEG and PIL decoding
#   bash benchmarks/gpu_checks.sh shapes     # varied image sizes: autotuning only full batches, and none
#   bash benchmarks/gpu_checks.sh single     # --scales 224 --center-crop: threads against processes, DataLoader recipe
#   bash benchmarks/gpu_checks.sh processes  # single scale in one process against two on the one GPU (--device cuda:0,cuda:0)
#   bash benchmarks/gpu_checks.sh profile    # the GIL decoding threads take (switch interval); single scale under torch.profiler
#   bash benchmarks/gpu_checks.sh spy        # what holds the GIL in a single-scale run (py-spy, carried in .whl/)
#   bash benchmarks/gpu_checks.sh precision  # cosine and SVM accuracy of bf16/fp16/tf32 against fp32
#   bash benchmarks/gpu_checks.sh pooling    # batched R-MAC against region by region
#   bash benchmarks/gpu_checks.sh draft      # --jpeg-draft: 12 Mpx photos read by 16 threads and processes, whole and drafted
#   bash benchmarks/gpu_checks.sh camera     # paper setting end to end on 12 Mpx photos, decoded whole and drafted
#   bash benchmarks/gpu_checks.sh blocks     # what a multi-device run's block costs on a GPU (two processes on the one GPU)
#   bash benchmarks/gpu_checks.sh fused      # two networks in one run, each image read once, against a run each (single scale)
#   bash benchmarks/gpu_checks.sh svm        # train-svm --solver lbfgs on the GPU against the CPU's solvers (< 9.5 min)
#   bash benchmarks/gpu_checks.sh reading    # second, if time is short: where single scale's reading ceiling lies (< 5.5 min)
#   bash benchmarks/gpu_checks.sh gpudecode  # third: JPEGs decoded on the GPU, nvJPEG against nvImageCodec's hardware engines (< 2.5 min)
#   bash benchmarks/gpu_checks.sh nvimgcodec # single scale with --decoder nvimgcodec: files per decoding call and threads (< 9.5 min)
#   bash benchmarks/gpu_checks.sh gpufixes   # the GPU-path fixes: nvImageCodec's pixels copied out of its memory, decoders, lbfgs (< 4 min)
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
bench="$python benchmarks/bench_extract.py"
single="--scales 224 --center-crop --count 20000 --model-only-count 4096 --workers 16"

# nvImageCodec (--decoder nvimgcodec) is not on the machine and cannot be downloaded there: its
# wheels come in .whl/ (carry it): `pip download` as the device README says, nvidia-nvimgcodec-cu13
# 0.9.0.20 and nvidia-nvjpeg 13.3.2.43 (29 MB together), installed into /tmp/site. Its wheel's
# nvidia/__init__.py would hide the machine's other nvidia.* packages: removed, the folder joins
# theirs as a namespace.
install_nvimgcodec() {
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/nvidia_nvimgcodec_cu13-*.whl .whl/nvidia_nvjpeg-*.whl && rm -f /tmp/site/nvidia/__init__.py \
        || echo "(nvImageCodec not installed: is .whl/ carried?)"
    export PYTHONPATH=$PYTHONPATH:/tmp/site
}

case ${1:?name a step: session, first, reading, gpudecode, nvimgcodec, gpufixes, network, tests, paper, nvjpeg, shapes, single, processes, profile, spy, precision, pooling, draft, camera, blocks, fused or svm} in
session)
    # One command for a session whose device time (15 minutes, the machine's start included) allows
    # one: the open targets first, then what decides the single-scale target, each step with
    # its own limit (9.5 minutes in all; run with timeout_s 600, and OUT set for the log).
    install_nvimgcodec
    # 1. GPU memory: a 6000x4000 photo at Q=512 and a 224x8000 panorama, never yet run on a GPU; and
    #    the GPU's decoders against PIL (--decoder nvimgcodec never yet run on a GPU); regions cropped
    #    from pixels decoded on the GPU (the thirty-first session's, never yet run on a GPU); two
    #    devices' processes on the one GPU, forked from the fork server (the thirty-sixth session's).
    timeout 150 $python -m pytest -q -s -ra tests/test_gpu.py -k "huge or estimate or collected or gpu_decoders or regions or two_processes" || echo "(exit $?)"
    # 2. Single scale, 5,000 images/s end to end on photo-like JPEGs (the ninth session: 4,812-4,850
    #    on smooth ones, decoded by 16 processes), against the GPU's JPEG engines (nvImageCodec, in
    #    threads), in one run; (b) says how many cores were busy.
    timeout 270 $bench ${single/20000/40000} --naive-count 2 --decode-in processes --compile --decoder torchvision,nvimgcodec || echo "(exit $?)"
    # 3. Reading alone, onto the GPU: 16 processes' libjpeg-turbo against nvImageCodec in 16 threads.
    timeout 60 $python benchmarks/bench_reader.py --count 512 --images 16384 --workers 16 --decoders torchvision,nvimgcodec --device cuda || echo "(exit $?)"
    # 4. Decoding alone, from memory: torchvision's nvJPEG against each of nvImageCodec's backends and
    #    vggfeat's decoder, in calls of 32 (vggfeat's JPEG_GROUP) and of 256.
    timeout 60 $python benchmarks/bench_gpu_decode.py --count 512 --batch 32,256 --rounds 3 || echo "(exit $?)"
    # 5. The writing thread per part on this machine's disk, each descriptor written once (the
    #    twentieth session's change), against the 0.82 s that 4,096 images take at 5,000 images/s.
    timeout 25 $python benchmarks/bench_store.py --images 20000 || echo "(exit $?)" ;;
first)
    # The tenth session's changes, built without a GPU, measured first: the output written as the run
    # goes (the ninth session's 40,000-image runs spent 7-9% assembling it after the last image), and
    # classify's pipelining; with them, the GPU-memory cases of the issue, never yet run on a GPU (a
    # 6000x4000 photo and a 224x8000 panorama; the auto batch's memory estimate). The JPEGs are
    # photo-like since the twelfth session (1.4x the decoding cost of the smooth ones the ninth
    # session measured; `single` measures both). Each run has its own time limit (9 minutes in all).
    timeout 30 $python benchmarks/bench_store.py --images 40000 || echo "(exit $?)"
    timeout 110 $python -m pytest -q -s -ra tests/test_gpu.py -k "queues or collected or huge or estimate or asleep" || echo "(exit $?)"
    # The thirteenth session's changes: workers copy pixels untransposed and decode at a lower
    # priority than the main process (+10, against +0 here), whose threads wait for the GPU asleep;
    # (b) also says how many cores were busy: all 16 means decoding is short of CPU.
    timeout 240 $bench ${single/20000/40000} --naive-count 4 --decode-in processes --compile --worker-niceness 10,0 || echo "(exit $?)"
    # Does a third chunk in flight absorb the host's uneven pace (ninth session: GPU busy 77%)?
    timeout 160 $bench ${single/20000/40000} --naive-count 4 --decode-in processes --compile --chunks-in-flight 3 || echo "(exit $?)" ;;
reading)
    # The ninth session read 4,220 photos/s with 16 decoding processes, about a third of what 16
    # cores decode at one core's rate (bench_decode, this machine). Is the ceiling the decoder, or
    # what is around it (reading files, the processes' copies and hand-over, the upload)? One core's
    # cost per photo, then reading alone, threads against processes, onto the GPU and left on the
    # host; bench_reader also says how many cores were busy and this process's CPU per image.
    timeout 90 $python benchmarks/bench_decode.py --count 64 --passes 3 --photo || echo "(exit $?)"
    timeout 150 $python benchmarks/bench_reader.py --count 512 --images 16384 --workers 8,16 --decoders torchvision --device cuda || echo "(exit $?)"
    timeout 90 $python benchmarks/bench_reader.py --count 512 --images 16384 --workers 16 --decoders torchvision --device cpu || echo "(exit $?)" ;;
gpudecode)
    # If reading is the ceiling because 16 cores cannot decode 5,000 photos a second: could the GPU
    # decode them? torchvision's nvJPEG (--decoder nvjpeg) against nvImageCodec's backends, its
    # hardware JPEG engines first, from memory.
    install_nvimgcodec
    timeout 150 $python benchmarks/bench_gpu_decode.py --count 512 --batch 32,256 --rounds 5 || echo "(exit $?)" ;;
nvimgcodec)
    # After a session whose engines decode faster in calls of 256 than of 32 (gpudecode): single scale
    # with --decoder nvimgcodec, its threads calling with 32 and 256 files, 8 and 16 threads (four
    # runs of at most 140 s: one command's 10 minutes).
    install_nvimgcodec
    for group in 32 256; do
        for workers in 8 16; do
            timeout 140 $bench ${single/--workers 16/--workers $workers} --naive-count 1 --decoder nvimgcodec --compile \
                --jpeg-group $group || echo "(exit $?)"
        done
    done ;;
gpufixes)
    # The GPU-path fixes built without a GPU: --decoder nvimgcodec's pixels are PyTorch's copies (its
    # own memory, freed on its stream when they are dropped, could be decoded over under the
    # network's queued resizes): 96 distinct images at three scales, together against each alone;
    # the GPU decoders against PIL, a failed file in the batch; train-svm --solver lbfgs on the GPU.
    install_nvimgcodec
    timeout 200 $python -m pytest -q -s -ra tests/test_gpu.py -k "memory_is_reused or gpu_decoders or lbfgs" || echo "(exit $?)" ;;
network)
    # Is the network itself faster fused, compiled or graphed? Single-scale batches, then the paper's largest scale.
    timeout 250 $python benchmarks/bench_network.py --batch 256 --size 224 || echo "(exit $?)"
    timeout 250 $python benchmarks/bench_network.py --batch 24 --size 512x682 || echo "(exit $?)" ;;
tests)
    install_nvimgcodec  # for --decoder nvimgcodec's test (skipped without it)
    $python -m pytest -q -s -ra tests/test_gpu.py ;;
paper)
    $bench --count 4096 --naive-count 64 --decode-in threads,processes
    $bench --count 4096 --naive-count 16 --decode-in processes --compile  # about 3 minutes: 8 shapes compiled
    $bench --count 4096 --naive-count 8 --no-autotune ;;
nvjpeg)
    $bench --count 4096 --naive-count 8 --decoder nvjpeg
    $bench --count 4096 --naive-count 8 --decoder pil ;;
shapes)
    $bench --count 4096 --naive-count 8 --varied-sizes
    $bench --count 4096 --naive-count 8 --varied-sizes --no-autotune ;;
single)
    # The 5,000 images/s target's setting as long runs get it; the smooth JPEGs are the ninth
    # session's (4,812-4,850 images/s then), which cost less than photos to decode.
    $bench ${single/20000/40000} --naive-count 4 --decode-in processes --compile
    $bench ${single/20000/40000} --naive-count 4 --decode-in processes --compile --content smooth
    # Read from the disk rather than the page cache (the JPEGs in this folder, not in a tmpfs /tmp):
    # 5,000 images/s of 90 KB photos ask 450 MB/s of it.
    TMPDIR=$PWD $bench ${single/20000/40000} --naive-count 4 --decode-in processes --compile --cold
    $bench $single --naive-count 64 --dataloader --decode-in threads,processes
    $bench $single --naive-count 8 --decoder nvjpeg
    $bench $single --naive-count 8 --no-flip --decode-in threads,processes ;;
processes)
    # If one reading process's host side (its GIL) keeps the GPU waiting, two processes on the one
    # GPU, a shard each with 8 decoding processes, may feed it faster: compare the 10-90% rates
    # (the second run's total also holds its processes' start and compiling, ~10-20 s).
    timeout 400 $bench ${single/20000/40000} --naive-count 2 --decode-in processes --compile --processes-per-device 2 || echo "(exit $?)" ;;
profile)
    $python benchmarks/bench_gil.py --count 256 --workers 2,8,16
    # Is the main thread queued behind decoding threads' Python after each torch call (a GIL convoy)?
    # Then a shorter switch interval speeds threads up, and processes do not need it.
    $bench $single --count 8192 --naive-count 4 --decode-in threads,processes --switch-interval 0.0002
    $bench --scales 224 --center-crop --count 4096 --model-only-count 1024 --workers 16 --naive-count 4 \
        --profile "${OUT:-.}/single-scale-trace.json.gz" ;;
spy)
    # py-spy samples the thread holding the GIL: where the main thread, which queues the GPU's work,
    # competes with the reading process's other threads. No internet there: the wheel comes in .whl/
    # (carry it; `pip download` as the device README says, py-spy 0.4.3).
    $python -m pip install -q --no-index --no-deps --target /tmp/spy .whl/py_spy-*.whl
    /tmp/spy/bin/py-spy record --gil --threads --format raw -r 200 -o "${OUT:-.}/gil.txt" -- \
        $bench ${single/20000/40000} --model-only-count 256 --naive-count 1 --decode-in processes --compile
    $python benchmarks/spy_summary.py "${OUT:-.}/gil.txt" --without make_jpegs --without model_only \
        --without naive --without _find_and_load --without process_start ;;
precision)
    $python benchmarks/bench_precision.py --device cuda --precisions bf16,fp16,tf32 --per-class 100 ;;
pooling)
    $python benchmarks/bench_pooling.py --device cuda --batch 64 --repeats 20 ;;
draft)
    # Camera photos leave the GPU waiting for decoding: how many a second 16 cores read whole and
    # drafted, and the drafted descriptors' cosine to whole ones (random weights, paper setting).
    timeout 400 $python benchmarks/bench_draft.py --count 64 --workers 16 --describe 8 --device cuda || echo "(exit $?)" ;;
camera)
    # What a run over camera photos gets end to end, whole and drafted, against the network alone
    # on the same inputs (the resized shapes are the same either way). Making the 512 photos takes
    # about a minute of each run.
    camera="--size 4000x3000 --count 512 --model-only-count 128 --naive-count 4 --decode-in processes --workers 16"
    timeout 280 $bench $camera || echo "(exit $?)"
    timeout 280 $bench $camera --jpeg-draft || echo "(exit $?)" ;;
blocks)
    # Each block of a multi-device run starts its own reader (decoding processes, slots) and file,
    # and the pipeline refills behind it. Single scale, even work, two processes on the one GPU:
    # 2 blocks against 16 of 1,024 images; the difference over 14 blocks is one block's cost, to
    # weigh against the 20 s that a 100,000-image block (BLOCK_IMAGES) lasts at 5,000 images/s.
    timeout 400 $python benchmarks/bench_blocks.py --devices cuda:0,cuda:0 --even --count 16384 --scales 224 \
        --center-crop --workers 8 --decode-in processes || echo "(exit $?)" ;;
fused)
    # extract --model vgg16,vgg19 against a run per network, where decoding weighs most: one 224
    # crop with its flip, bf16 (on the CPU the network is nearly all the time: 1.04-1.06x).
    timeout 400 $python benchmarks/bench_fused.py --count 8192 --scales 224 --center-crop --device cuda --repeat 2 \
        || echo "(exit $?)" ;;
svm)
    # train-svm --solver lbfgs on the GPU (float32) against the CPU's liblinear (10 of the 100
    # classes, extrapolated) and lbfgs, 100,000 fc7-like rows; and the GPU test of its objective.
    # (60 s and three runs of at most 170 s: one command's 10 minutes.)
    timeout 60 $python -m pytest -q -ra tests/test_gpu.py -k lbfgs || echo "(exit $?)"
    for solver in "lbfgs --device cuda" "lbfgs --device cpu" "liblinear --train-classes 10"; do
        timeout 170 $python benchmarks/bench_svm.py --rows 100000 --dim 4096 --classes 100 --mode vggfeat --solver $solver \
            || echo "(exit $?)"
    done ;;
*)
    echo "unknown step $1: session, first, reading, gpudecode, nvimgcodec, gpufixes, network, tests, paper, nvjpeg, shapes, single, processes, profile, spy, precision, pooling, draft, camera, blocks, fused or svm" >&2
    exit 2 ;;
esac
