# One image for Dataflow: the workers' custom SDK container and the Flex Template launcher.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/adpredict/worker:0.1.0 .
#
# Workers: Beam's SDK image for the pinned Beam and Python versions (tests/test_dataflow.py
# checks they agree with setup.py, requirements.lock and CI's Python), the locked stack and
# this package. Run with SDK_CONTAINER_IMAGE=<image> ./run_dataflow.sh ... (--sdk_location
# container). For GPU workers add GPU_TYPE/GPU_COUNT (README "On Dataflow").
# Launcher: the Flex Template launcher binary copied from Google's base image runs
# flex_template/launch.py, which submits the job and exits without waiting.
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0

FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS template_launcher

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}
WORKDIR /opt/adpredict
COPY requirements.lock setup.py ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pipeline ./pipeline
COPY transforms ./transforms
COPY flex_template ./flex_template
RUN pip install --no-cache-dir --no-deps .

COPY --from=template_launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/adpredict/flex_template/launch.py
# The SDK image's entrypoint (/opt/apache/beam/boot) is kept: workers start through it.
