"""LoRA multiplexing: many adapters over shared base-model replicas, loaded on demand."""
