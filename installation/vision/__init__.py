"""Reading the space: a CLIP model beside the decoder (describe, similarity to the prompts, the frame check, the
prompt audit). ``hook`` runs where frames are made; ``part`` uses what it learns in the show's process."""
