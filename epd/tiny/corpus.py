"""Built-in training text for the tiny tokenizers.

Written for epd: plain English about pictures, video, sound and chat, some numbers and a little
code, so that the byte-level BPE learns common words and the prompts of tests tokenize into a
few dozen ids rather than hundreds of bytes. Changing this text changes every tiny tokenizer (and
so the bytes of every tiny checkpoint): bump ``epd.tiny.FORMAT_VERSION`` when you edit it.
"""

CORPUS = """\
You are a helpful assistant. Please describe the image in one sentence.
What is shown in this picture? The picture shows a small red boat on a calm blue lake.
Describe the video. The video shows a dog running across a green field and catching a ball.
What can you hear in the audio? I can hear rain falling on a roof and a bird singing far away.
How many people are in the photo? There are three people standing in front of a white house.
Read the text in the image. The sign says: Open from nine in the morning until six at night.
Compare the two images. The first image is taken at noon, the second one at sunset.
What happens at the end of the clip? At the end of the clip, the door closes and the light goes out.
Summarize the document in three bullet points, then answer the question below.
Thank you! You are welcome. Is there anything else I can help you with today?

A camera turns light into numbers. Each image is a grid of pixels, and every pixel holds three
values for red, green and blue. A vision encoder cuts the image into small square patches,
turns each patch into a vector, and lets the patches look at each other through attention.
Neighbouring patches are then merged, so a large picture becomes a short list of tokens that a
language model can read next to the words of the question.

A video is a sequence of frames. The frames are sampled at a fixed rate, for example two frames
per second, and pairs of frames are packed together along the time axis. The model sees where
each token sits in time, in height and in width, which lets it reason about motion and order.

Speech and music reach the model as sound waves. The waves are cut into short windows and turned
into a spectrogram, a picture of how loud each pitch is over time. An audio encoder reads the
spectrogram and produces tokens, one for every short stretch of sound.

Serving a large model is a matter of moving data well. The encoder runs once per image, the
prefill step reads the whole prompt and fills the key and value cache, and the decode step adds
one token at a time. When these stages run on different machines, the cache and the embeddings
must travel between them quickly, and the scheduler must keep every device busy without
running out of memory. Latency is the time until the first token; throughput is the number of
tokens per second across all requests.

The weather today is sunny with a light wind from the west. Tomorrow there will be clouds in the
morning and some rain in the afternoon. The temperature will stay between twelve and eighteen
degrees. On the weekend the sky should clear again, which is good news for the market in the
old town square, where farmers sell apples, bread, cheese, honey, eggs and fresh flowers.

To make a simple soup, cut two onions, three carrots and a few potatoes into small pieces. Cook
the onions in a little oil until they are soft, add the other vegetables and cover them with
water. Let everything simmer for twenty minutes, add salt and pepper, and serve it hot with bread.

Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 24 28 32 64 100 128 256 512 1000 1024 2048 4096 2025.
Times: 09:30, 12:00, 18:45. Prices: $3.50, 12.99 EUR. Sizes: 1920x1080, 640x480, 224x224.
The answer is 42. Two plus two is four. Ten percent of two hundred is twenty.

def add(a: int, b: int) -> int:
    return a + b

for i in range(10):
    print(i, add(i, i))

class Request:
    def __init__(self, prompt, max_tokens=16):
        self.prompt = prompt
        self.max_tokens = max_tokens

{"role": "user", "content": "Hello, who are you?"}
{"role": "assistant", "content": "I am a small language model."}

Once upon a time there was a little robot who wanted to learn every colour in the world. It
travelled to the sea and learned blue, to the forest and learned green, to the desert and
learned yellow. When it came home, it painted the walls of its room with everything it had seen,
and its friends came to look at the picture and smiled.
"""
