"""Preprocessing written once: the schema, the tf.Transform `preprocessing_fn` derived from
it, and the export that attaches the transform graph to a trained model."""
