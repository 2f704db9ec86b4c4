# One image for Dataflow: the workers' custom SDK container and the Flex Template launcher.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/adpredict/worker:0.1.0 .                    # CPU (default)
#   docker build --target gpu -t REGION-docker.pkg.dev/PROJECT/adpredict/worker-gpu:0.1.0 .   # GPU workers
#
# Workers: Beam's SDK image for the pinned Beam and Python versions (tests/test_dataflow.py
# checks they agree with setup.py, requirements.lock and CI's Python), the locked stack with
# its S3 and Azure clients, and this package. Run with SDK_CONTAINER_IMAGE=<image>
# ./run_dataflow.sh ... (--sdk_location container).
# Launcher: the Flex Template launcher binary copied from Google's base image runs
# flex_template/launch.py, which submits the job and exits without waiting.
# GPU workers (target gpu): the same image plus TensorFlow's CUDA libraries, the nvidia-*
# wheels of tensorflow[and-cuda] pinned in requirements-gpu.lock. The NVIDIA driver is not in
# the image: Dataflow installs it on the VM (install-nvidia-driver). Run with GPU_TYPE=...
# GPU_SDK_CONTAINER_IMAGE=<image> ./run_dataflow.sh ... (docs/runners.md, "GPU workers").
# Stages: cpu, gpu, and last the default (no --target), which is the cpu image.
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0

FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS template_launcher

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS cpu
WORKDIR /opt/adpredict
COPY requirements.lock requirements-clouds.lock setup.py ./
# The clouds lock: Beam's s3:// and azfs:// file systems (apache-beam[aws,azure]), for a job
# that reads or writes Amazon S3 or Azure Blob Storage from Dataflow's workers.
RUN pip install --no-cache-dir -r requirements.lock -r requirements-clouds.lock
COPY pipeline ./pipeline
COPY transforms ./transforms
COPY flex_template ./flex_template
RUN pip install --no-cache-dir --no-deps .

COPY --from=template_launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/adpredict/flex_template/launch.py
# The SDK image's entrypoint (/opt/apache/beam/boot) is kept: workers start through it.

FROM cpu AS gpu
COPY requirements-gpu.lock ./
# tensorflow[and-cuda] at requirements.lock's version adds only the locked nvidia-* wheels
# (about 2.7 GB); the constraint keeps every other package at its requirements.lock pin.
RUN pip install --no-cache-dir -r requirements-gpu.lock -c requirements.lock
# Dataflow mounts the driver's libraries (libcuda) and nvidia-smi under /usr/local/nvidia;
# Beam's image, unlike NVIDIA's CUDA images, does not put them on the search paths.
ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib64 \
    PATH=${PATH}:/usr/local/nvidia/bin
# The build log records what TensorFlow was built for beside the CUDA wheels it will load.
RUN python -c "import importlib.metadata as md, tensorflow as tf; b = tf.sysconfig.get_build_info(); \
cuda, cudnn = md.version('nvidia-cuda-runtime-cu12'), md.version('nvidia-cudnn-cu12'); \
assert b['is_cuda_build'] and cuda.split('.')[0] == b['cuda_version'].split('.')[0] \
and cudnn.split('.')[0] == b['cudnn_version'].split('.')[0], (b, cuda, cudnn); \
print('TensorFlow', tf.__version__, 'built for CUDA', b['cuda_version'], 'cuDNN', b['cudnn_version'], \
'capabilities', b['cuda_compute_capabilities'], '| wheels: CUDA runtime', cuda, 'cuDNN', cudnn)"

# The default target: the CPU image above, unchanged.
FROM cpu
