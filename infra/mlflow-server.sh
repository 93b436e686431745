#!/usr/bin/env bash
# The MLflow tracking server of a cluster (started on the head by cluster.yaml). Point tickray at it with
# TICKRAY_MLFLOW_TRACKING_URI=http://<head>:5000. Artifacts go through the server (--serve-artifacts),
# so workers need no credentials for the artifact store.
#   MLFLOW_BACKEND_STORE_URI      default sqlite:///$MLFLOW_HOME/mlflow.db; e.g. postgresql://user:pw@db:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION  default $MLFLOW_HOME/artifacts; e.g. s3://bucket/mlflow
#   MLFLOW_HOST / MLFLOW_PORT     default 0.0.0.0 / 5000
set -euo pipefail
MLFLOW_HOME="${MLFLOW_HOME:-$HOME/mlflow}"
mkdir -p "$MLFLOW_HOME"
exec mlflow server \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///$MLFLOW_HOME/mlflow.db}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$MLFLOW_HOME/artifacts}" \
  --serve-artifacts
