"""atom's command line; the stages themselves live in data_pipeline, pretrain, midtrain and slurm."""
