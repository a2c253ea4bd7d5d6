-- Run once by the postgres image on an empty volume. POSTGRES_DB (mlflow) exists already;
-- MLflow's basic-auth user store and Prefect get their own databases, owned by POSTGRES_USER.
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
