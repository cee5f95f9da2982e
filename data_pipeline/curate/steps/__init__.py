"""atom's own datatrove PipelineSteps: provenance readers, accounting, transforms, writers."""
