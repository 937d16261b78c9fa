-- Deployment, release and rescue reuse the commissioning runs, steps and
-- agent tokens: a run now says what it is for, and carries what its purpose
-- needs (deployment: the image and its sha256, SSH keys, user data, the
-- resolved root disk and the config-drive kind; rescue: the state to return
-- to and the keys). The machine's image (machines.image_id, 0006) is set
-- when a deployment starts and cleared when the machine is released.
-- Keep in step with migrations/postgres/0007_deployment.sql.
ALTER TABLE commissioning_runs ADD COLUMN purpose TEXT NOT NULL DEFAULT 'commissioning';
ALTER TABLE commissioning_runs ADD COLUMN params TEXT NOT NULL DEFAULT '{}';
CREATE INDEX commissioning_runs_machine_purpose ON commissioning_runs (machine_id, purpose, number);
