# Training image for compactcnn, locally or on Vertex AI custom training.
#   docker build -t compactcnn:cpu .
#   docker build --build-arg TENSORFLOW=gpu -t compactcnn:gpu .
# The configs/ folder is copied in, so `compactcnn run configs/quickstart.yaml` works in the
# container; configs in Cloud Storage are read through Vertex AI's /gcs/ mount instead.
FROM python:3.11-slim

# cpu installs the plain tensorflow wheel, which runs on CPU-only machines (not tensorflow-cpu:
# tf-keras requires the tensorflow distribution itself, see pyproject.toml); gpu installs
# tensorflow[and-cuda], whose pip wheels bring CUDA and cuDNN, so the slim base needs only the
# host's NVIDIA driver.
ARG TENSORFLOW=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies change less often than code: install them in their own layer first. Installing the
# package from a stub keeps this layer cached until pyproject.toml changes.
COPY pyproject.toml README.md ./
# cloudml-hypertune: how `compactcnn vertex trial` reports its metrics to Vertex AI tuning jobs.
RUN mkdir compactcnn && touch compactcnn/__init__.py \
    && pip install ".[${TENSORFLOW}]" cloudml-hypertune \
    && pip uninstall --yes compactcnn \
    && rm -rf compactcnn build *.egg-info

COPY compactcnn ./compactcnn
COPY configs ./configs
RUN pip install --no-deps . && rm -rf build *.egg-info

ENTRYPOINT ["compactcnn"]
CMD ["--help"]
