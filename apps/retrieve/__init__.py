"""Image retrieval: L2-normalised embeddings, a persistent FAISS + SQLite index, search and duplicates."""
