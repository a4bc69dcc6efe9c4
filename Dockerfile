# The PHT station's Airflow image: Apache Airflow 3.3.2 with pht-airflow[station] installed from
# the committed constraints.txt, the station DAGs in $AIRFLOW_HOME/dags and the webhook plugin
# (POST /pht/registry-events in the API server) in $AIRFLOW_HOME/plugins. It runs as the base
# image's non-root `airflow` user and holds no keys, passwords or station config.
#
# Build (from the repository root):
#   docker build -t pht-station:0.1.0 .
# constraints.txt pins apache-airflow==3.3.2, the base image's version; pip fails the build
# rather than change Airflow if the two ever disagree. It may move other libraries the base
# image ships to the versions pinned there.
#
# Run: use the image for every Airflow component (api-server, scheduler, dag-processor,
# triggerer), as with the official image, and give each of them:
#   - PHT_STATION_CONFIG=/path/to/station.yaml, mounted read-only (see
#     config/station.example.yaml); the keys and secrets it refers to come from mounted files,
#     environment variables or Airflow Variables/Connections (a secrets backend), never from
#     this image. The API server needs it too: the webhook checks the secret it names.
#     (Or PHT_STATION_CONFIG_DIR, a folder of <station>.yaml, for one Airflow hosting several.)
#   - The Docker engine that runs the trains in the sandbox:
#     -v /var/run/docker.sock:/var/run/docker.sock --group-add "$(stat -c %g /var/run/docker.sock)"
#     (or DOCKER_HOST). Whoever reaches that socket controls the host: give it to this
#     container only. The engine resolves bind mounts on its own host, so mount the station's
#     work_dir and data set folders at the same paths inside as outside, e.g.
#     -v /var/lib/pht:/var/lib/pht (keep audit_log on such a persistent volume too).
#   - Registry webhooks (Harbor: "Artifact pushed" on the station's project) go to
#     https://<api-server>/pht/registry-events with the secret in the Authorization header.
FROM apache/airflow:3.3.2-python3.11

# The base image's `airflow` user (uid 50000, group root), by number so that any runtime
# can tell it is not root.
USER 50000

# pip builds the package in its source folder, so the folder must be the airflow user's: COPY
# --chown creates it that way (a WORKDIR made first could leave it to root).
COPY --chown=50000:0 pyproject.toml setup.cfg README.md constraints.txt /opt/pht-airflow/
COPY --chown=50000:0 pht_airflow/ /opt/pht-airflow/pht_airflow/
WORKDIR /opt/pht-airflow
RUN pip install --no-cache-dir -c constraints.txt "apache-airflow==${AIRFLOW_VERSION}" ".[station]" \
    && pht --help > /dev/null

WORKDIR ${AIRFLOW_HOME}
COPY --chown=50000:0 dags/ ${AIRFLOW_HOME}/dags/
COPY --chown=50000:0 plugins/ ${AIRFLOW_HOME}/plugins/
