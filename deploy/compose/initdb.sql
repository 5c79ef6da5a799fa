-- The stack's second database: POSTGRES_DB (radflow) holds the prediction log, this one MLflow's runs and registry.
CREATE DATABASE mlflow;
