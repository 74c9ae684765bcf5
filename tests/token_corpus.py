"""Corpus for tuning and testing the token estimator against tiktoken ``cl100k_base``.

Four categories, each a list of samples of varied lengths (``CORPUS``):

* ``prose``: English paragraphs written for this corpus, alone and concatenated;
* ``code``:  real Python source from the standard library (``inspect.getsource``) and a
  few C, JavaScript, Go and SQL snippets;
* ``json``:  real-looking OpenAI API payloads from a seeded generator (requests with
  tools, responses, stream chunks, embeddings, model lists, usage logs), compact and
  indented;
* ``cjk``:   Chinese and Japanese paragraphs written for this corpus, alone and joined.

Everything is deterministic for a given Python version.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import string

__all__ = ("CJK", "CODE", "CORPUS", "JSON", "PROSE", "samples")

_PROSE_PARAGRAPHS = [
    """The harbour was quiet in the hour before dawn. A few fishing boats rocked against \
their moorings, their hulls knocking softly on the old tyres that lined the quay, and a \
single gull stood on a bollard as if it had been posted there to keep watch. Somewhere \
up the hill a baker had already lit his ovens, and the smell of bread drifted down the \
narrow streets, past the shuttered cafés and the chandlery with its coils of rope and \
tins of varnish stacked in the window. Marta walked slowly along the sea wall with her \
hands in her pockets. She had not slept. The letter was still folded in her coat, and \
every few steps she touched it through the cloth, as though it might have disappeared \
while she wasn't paying attention.""",
    """Most performance problems in web services are not caused by slow code but by \
waiting: waiting for a database, waiting for a lock, waiting for a remote API that \
answers in two hundred milliseconds on a good day and in four seconds on a bad one. \
Before you rewrite a function in a faster language, measure where the time actually \
goes. A flame graph of a single request will often show that ninety percent of the wall \
clock is spent idle, blocked on I/O, and that the CPU-bound part you were worried about \
is a thin sliver at the bottom of the stack. Fix the waiting first. Batch the queries, \
add a cache with a sensible expiry, set timeouts on every outbound call, and only then \
reach for the profiler.""",
    """In the spring of 1887 the town council voted, by a margin of a single ballot, to \
build a public library on the site of the old corn exchange. The decision was not \
popular. Farmers complained that they would lose the only covered market within twenty \
miles, and the vicar preached a sermon on the dangers of idle reading. Yet the building \
went up within two years, paid for largely by a bequest from a retired schoolmistress \
whose name is still carved above the door. By 1900 it lent more than ten thousand books \
a year, ran evening classes in arithmetic and bookkeeping, and had become, in the words \
of a local newspaper, "the busiest room in the county after the railway station." """,
    """To make the sauce, melt two tablespoons of butter in a heavy pan over medium \
heat. When it stops foaming, add a finely chopped shallot and a pinch of salt, and cook \
gently until it is soft and translucent, about five minutes. Pour in half a cup of dry \
white wine, turn up the heat, and let it bubble until it has reduced by two thirds. \
Lower the heat again and whisk in the cream a little at a time. Season with pepper, a \
squeeze of lemon, and a handful of chopped parsley. If the sauce is too thick, loosen it \
with a spoonful of the pasta water; if it is too thin, simmer it for another minute or \
two. Serve immediately.""",
    """Dear Mr. Okafor, thank you for your email of 14 March regarding the delayed \
shipment. I am sorry for the inconvenience this has caused. Our warehouse in Rotterdam \
was closed for three days last week because of a power failure, and a number of orders, \
including yours, were held back as a result. I have asked the logistics team to give \
your order priority, and it left the warehouse this morning. You should receive it by \
Friday. I have also applied a credit of fifteen percent to your account, which will be \
deducted automatically from your next invoice. Please do not hesitate to contact me \
directly if there is anything else I can do. Kind regards, Helen Price, Customer \
Relations.""",
    """Photosynthesis is the process by which green plants, algae and some bacteria \
convert light energy into chemical energy. In the chloroplasts of a leaf, pigments such \
as chlorophyll absorb light, mostly in the red and blue parts of the spectrum, and use \
that energy to split water molecules. The oxygen is released into the air as a \
by-product, while the hydrogen ions and electrons drive a chain of reactions that \
produce ATP and NADPH. In a second stage, often called the Calvin cycle, these molecules \
supply the energy needed to fix carbon dioxide from the atmosphere into sugars. Almost \
every food chain on Earth depends on this quiet, continuous chemistry.""",
    """The match turned in the sixty-third minute. Until then the visitors had defended \
deep and well, absorbing wave after wave of pressure and breaking forward only rarely, \
but a careless back pass from their captain let the home striker in behind. He rounded \
the goalkeeper and rolled the ball into an empty net, and the stadium, which had been \
growing restless, erupted. Two further goals followed in the space of ten minutes. By \
the final whistle the away supporters had mostly gone home, and the manager, asked \
afterwards what had gone wrong, said only that one mistake at this level is enough and \
that his players would learn from it.""",
    """Our privacy policy explains what personal information we collect when you use \
the service, why we collect it, and how you can control it. We collect the information \
you give us directly, such as your name, email address and payment details, and \
information generated by your use of the service, such as log data, device identifiers \
and approximate location derived from your IP address. We use this information to \
provide and improve the service, to process payments, to communicate with you, and to \
comply with our legal obligations. We never sell your personal information. You may \
request a copy of your data, or ask us to delete it, at any time by writing to our data \
protection officer.""",
    """I have been keeping bees for eleven years now, and I still learn something new \
every season. This year it was patience. In June one of my hives swarmed, and instead of \
chasing the cluster through the neighbour's orchard with a cardboard box, as I would \
have done once, I sat on the grass and watched. The bees hung from a low branch of the \
apple tree for most of the afternoon, a dark humming beard the size of a rugby ball. \
Around four o'clock the scouts came back, the cluster loosened, and the whole swarm \
rose into the air and drifted over the hedge towards the church. I never saw them again, \
and I find that I don't mind.""",
    """The committee reviewed three options for reducing congestion on the ring road. \
Option A, widening the carriageway between junctions four and seven, would cost an \
estimated 42 million pounds and take three years to complete. Option B, a bus rapid \
transit line with dedicated lanes and signal priority, would cost about 18 million and \
could open within eighteen months, but would require the removal of roughly 300 parking \
spaces. Option C, a congestion charge during peak hours, would raise revenue rather than \
consume it, though public consultation suggested strong opposition. After a long \
discussion the committee recommended option B, subject to a detailed study of the \
effect on local businesses.""",
    """Grandfather never talked about the war. When we asked, he would change the \
subject, or get up to put the kettle on, or tell us instead about the dog he had owned \
as a boy, a wiry terrier called Smudge who once stole an entire leg of lamb from the \
butcher's cart. It was only after he died, when we were clearing out the loft, that we \
found the tin box with his medals, a handful of photographs of young men in uniform \
squinting into the sun, and a bundle of letters to my grandmother, tied with string, \
which none of us has yet found the courage to read.""",
    """Good documentation answers the questions a reader actually has, in the order \
they have them. A newcomer wants to know what the tool is for and how to get it running \
in five minutes; an experienced user wants a precise reference they can search; someone \
debugging a failure at two in the morning wants the error message explained and a \
workaround. These are different documents, and trying to serve all three readers in a \
single page usually serves none of them well. Write a short tutorial, a complete \
reference, and a troubleshooting guide, link them to each other, and keep each one \
honest about what it covers.""",
]

_CJK_PARAGRAPHS = [
    # Chinese
    """清晨的西湖笼罩在一层薄雾之中，远处的山峦若隐若现，像是一幅还没有干透的水墨画。\
沿着苏堤慢慢走去，柳枝低垂，偶尔有几只白鹭从水面掠过，留下一圈圈细小的涟漪。\
早起锻炼的老人们在亭子里打太极拳，动作缓慢而舒展；卖早点的小摊已经支了起来，\
豆浆和油条的香气飘散在湿润的空气里。我在一张长椅上坐下，看着游船一艘艘驶出码头，\
心里忽然觉得，这座城市最美的时刻，也许正是它还没有完全醒来的时候。""",
    """随着人工智能技术的快速发展，大语言模型已经被广泛应用于客服、写作、编程辅助和数据\
分析等领域。然而，模型的推理成本仍然是企业面临的一大挑战。每一次调用都会消耗一定数量\
的令牌，而令牌的价格因模型而异。为了控制预算，许多公司开始在应用和模型服务之间部署\
网关，对请求进行限流、缓存和计费。网关可以在请求发出之前估算提示词的长度，预先冻结\
相应的额度，并在收到实际用量之后再进行结算，从而避免账户透支。""",
    """我的外婆住在江南的一个小镇上。小镇不大，一条河从镇中间穿过，两岸是白墙黑瓦的老房子，\
石桥一座接着一座。小时候每到暑假，我都会去外婆家住上一个月。白天跟着表哥去河里摸螺蛳，\
晚上在院子里乘凉，听外婆讲她年轻时候的故事。她说那时候家里穷，一年到头吃不上几回肉，\
可是逢年过节，全家人围坐在一起包饺子，那种热闹是现在怎么也找不回来的。如今外婆已经\
九十二岁了，耳朵有些背，但说起往事来，眼睛依然闪着光。""",
    """根据国家统计局发布的数据，今年第一季度国内生产总值同比增长百分之五点三，高于市场\
预期。其中，第三产业增加值增长百分之五点零，对经济增长的贡献率超过六成。消费市场\
持续回暖，社会消费品零售总额达到十二万亿元，餐饮、旅游和文化娱乐等服务消费增长尤为\
明显。不过，分析人士指出，房地产投资仍在下滑，外部需求存在不确定性，下一阶段仍需\
加大宏观政策的调节力度，巩固经济回升向好的基础。""",
    """学习一门外语，最重要的不是背了多少单词，而是有没有真正用它去交流。很多人花了十几年\
学英语，考试成绩不错，可一到需要开口的时候就紧张得说不出话来。其实语言首先是一种工具，\
犯错是学习过程中不可避免的一部分。与其追求每一句话都语法完美，不如大胆地表达自己的\
想法，在实践中不断纠正。每天坚持听半小时的播客，读几页原版书，和朋友用外语聊聊天，\
日积月累，进步自然会出现。""",
    """这款手机采用了六点七英寸的高刷新率屏幕，分辨率为两千八百乘以一千二百八十像素，\
支持一百二十赫兹的自适应刷新。处理器方面，它搭载了最新一代的旗舰芯片，配合十二GB\
内存和二百五十六GB存储，日常使用非常流畅。电池容量为五千毫安时，支持一百瓦有线快充，\
大约二十五分钟就能充满。相机系统由五千万像素主摄、超广角镜头和长焦镜头组成，\
夜景拍摄表现尤其出色。总的来说，这是一款性价比很高的产品。""",
    """那年冬天雪下得特别大。火车在一个不知名的小站停了整整六个小时，车厢里的暖气时有时无，\
乘客们裹着大衣，有的打牌，有的睡觉，有的干脆下车去站台上踩雪。我对面坐着一位去北方\
探亲的大妈，她从包里拿出煮鸡蛋和烧饼，硬要分给周围的每一个人。到了半夜，列车员终于\
宣布前方的线路已经清理完毕，车厢里响起一阵欢呼。很多年过去了，我早已忘记那次旅行的\
目的地，却一直记得那位大妈温暖的笑容。""",
    """在软件开发中，代码审查是保证质量的重要环节。一次好的审查不仅能发现潜在的缺陷，\
还能促进团队成员之间的知识分享。审查者应当关注代码的正确性、可读性和可维护性，\
而不是纠结于个人的编码风格。提出意见时要具体，最好附上理由和改进建议；被审查的人\
也应该保持开放的心态，把反馈看作是提升自己的机会。对于较大的改动，最好拆分成多个\
小的提交，这样审查起来更加高效，也更容易回滚。""",
    # Japanese
    """京都の秋は、毎年たくさんの観光客でにぎわいます。特に十一月の中旬から下旬にかけて、\
東福寺や永観堂、嵐山などの名所は紅葉を見に来た人々でいっぱいになります。朝早く出かけ\
れば、まだ人の少ない境内で、静かに色づいた木々を眺めることができます。参道の茶屋で\
温かいお茶と和菓子をいただきながら、落ち葉が風に舞うのを見ていると、時間がゆっくりと\
流れていくように感じられます。夕方になると、ライトアップされた庭園がまた違った表情を\
見せてくれます。""",
    """先日、駅前に新しくできたラーメン屋に行ってきました。店内はカウンター席が十席ほどの\
こぢんまりとした造りで、開店直後にもかかわらず、すでに行列ができていました。\
注文したのは看板メニューの濃厚豚骨醤油ラーメンです。スープはクリーミーでありながら\
後味がすっきりしていて、自家製の太麺によく絡みます。チャーシューは柔らかく、\
味玉の半熟具合も絶妙でした。値段は九百八十円と少し高めですが、また行きたいと思える\
一杯でした。""",
    """弊社では、来月一日より新しい勤怠管理システムを導入いたします。これに伴い、\
従来の紙のタイムカードは廃止となり、出勤および退勤の記録はすべて社員証をカード\
リーダーにかざす方式に変更されます。在宅勤務の際は、専用のウェブページから打刻して\
ください。操作方法についての説明会を今週金曜日の午後三時から本社の大会議室で開催\
しますので、各部署の担当者は必ず出席してください。ご不明な点がございましたら、\
人事部までお問い合わせください。""",
    """子どもの頃、夏休みになると毎年祖父母の住む田舎へ遊びに行きました。家の裏には小さな\
川が流れていて、いとこたちと一緒に魚を捕まえたり、石を投げて水切りをしたりして、\
一日中遊んでいました。夜になると縁側に座ってスイカを食べ、遠くで鳴くカエルの声を\
聞きながら、祖父が語る昔話に耳を傾けたものです。あの頃の夏はどうしてあんなに長く\
感じられたのでしょうか。大人になった今でも、蝉の声を聞くと、あの懐かしい風景が\
目に浮かびます。""",
    """機械学習のモデルを本番環境で運用する際には、精度だけでなく、推論の速度やコスト、\
そして監視の仕組みについても考える必要があります。学習時とは異なるデータが入力される\
と、モデルの性能は徐々に低下していきます。これをデータドリフトと呼びます。定期的に\
予測結果を評価し、必要に応じて再学習を行うことが重要です。また、障害が発生した場合に\
備えて、以前のバージョンへすぐに切り戻せるようにしておくと安心です。""",
    """健康のために、毎朝三十分のウォーキングを始めてから半年が経ちました。最初の頃は\
早起きがつらくて、三日坊主になるのではないかと心配していましたが、近所の公園を歩く\
うちに、季節の移り変わりを感じるのが楽しみになってきました。春には桜、夏には紫陽花、\
秋にはイチョウの黄色い葉が道を彩ります。体重は四キロほど減り、夜もぐっすり眠れる\
ようになりました。何より、一日を気持ちよく始められるのが一番の収穫です。""",
    """日本の鉄道は、その正確さで世界的に知られています。新幹線の平均遅延時間は一分にも\
満たず、駅のホームには乗車位置が細かく表示されていて、乗客は整然と列を作って電車を\
待ちます。一方で、朝の通勤ラッシュの混雑は非常に激しく、東京の一部の路線では乗車率が\
百五十パーセントを超えることもあります。近年は時差出勤やテレワークの普及によって、\
混雑は少しずつ緩和されてきていますが、根本的な解決にはまだ時間がかかりそうです。""",
    """このたびは当店の商品をお買い上げいただき、誠にありがとうございます。お届けした\
商品に不具合があったとのこと、大変ご迷惑をおかけいたしました。心よりお詫び申し上げます。\
つきましては、新しい商品を本日発送いたしましたので、到着まで今しばらくお待ちください。\
お手数ではございますが、不具合のあった商品は同封の返送用伝票を使って、着払いにて\
ご返送いただけますと幸いです。今後とも何卒よろしくお願い申し上げます。""",
]

_CODE_TARGETS = [
    "textwrap:dedent",
    "textwrap:TextWrapper",
    "textwrap:shorten",
    "shutil:_copytree",
    "tempfile:_mkstemp_inner",
    "pprint:PrettyPrinter._format",
    "fractions:Fraction.limit_denominator",
    "fractions:Fraction.__new__",
    "shlex:split",
    "shlex:shlex.read_token",
    "string:Template",
    "argparse:ArgumentParser.parse_known_args",
    "argparse:HelpFormatter._format_usage",
    "dataclasses:_process_class",
    "collections:namedtuple",
    "calendar:TextCalendar",
    "difflib:SequenceMatcher.get_matching_blocks",
    "ipaddress:_BaseNetwork.subnets",
    "statistics:median",
    "urllib.parse:urlsplit",
    "fnmatch:translate",
    "glob:_iglob",
    "colorsys",
    "email.utils:parseaddr",
    "configparser:RawConfigParser._read",
]

_CODE_SNIPPETS = [
    r"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct node {
    char *key;
    int value;
    struct node *next;
} node_t;

static unsigned long hash(const char *s) {
    unsigned long h = 5381;
    int c;
    while ((c = *s++))
        h = ((h << 5) + h) + c; /* h * 33 + c */
    return h;
}

int table_put(node_t **buckets, size_t nbuckets, const char *key, int value) {
    size_t i = hash(key) % nbuckets;
    for (node_t *n = buckets[i]; n != NULL; n = n->next) {
        if (strcmp(n->key, key) == 0) {
            n->value = value;
            return 0;
        }
    }
    node_t *n = malloc(sizeof(*n));
    if (n == NULL)
        return -1;
    n->key = strdup(key);
    n->value = value;
    n->next = buckets[i];
    buckets[i] = n;
    return 1;
}
""",
    r"""export async function fetchWithRetry(url, options = {}, retries = 3) {
  let lastError;
  for (let attempt = 0; attempt <= retries; attempt++) {
    try {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), options.timeout ?? 10_000);
      const res = await fetch(url, { ...options, signal: controller.signal });
      clearTimeout(timer);
      if (res.status >= 500 && attempt < retries) {
        throw new Error(`upstream returned ${res.status}`);
      }
      return res;
    } catch (err) {
      lastError = err;
      const delay = Math.min(1000 * 2 ** attempt, 8000) + Math.random() * 250;
      console.warn(`attempt ${attempt + 1} failed: ${err.message}; retrying in ${delay | 0}ms`);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
  throw lastError;
}
""",
    r"""package limiter

import (
	"sync"
	"time"
)

// Bucket is a token bucket refilled at Rate tokens per second up to Burst.
type Bucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
	Rate   float64
	Burst  float64
}

func (b *Bucket) Allow(n float64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if !b.last.IsZero() {
		b.tokens += now.Sub(b.last).Seconds() * b.Rate
		if b.tokens > b.Burst {
			b.tokens = b.Burst
		}
	} else {
		b.tokens = b.Burst
	}
	b.last = now
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}
""",
    r"""-- Daily spend per API key over the last 30 days, most expensive first.
SELECT k.name AS key_name,
       date_trunc('day', u.created_at) AS day,
       SUM(u.prompt_tokens) AS prompt_tokens,
       SUM(u.completion_tokens) AS completion_tokens,
       ROUND(SUM(u.cost_micros) / 1e6, 4) AS cost_usd
FROM usage_events u
JOIN api_keys k ON k.id = u.key_id
WHERE u.created_at >= now() - interval '30 days'
  AND u.status = 'ok'
GROUP BY k.name, date_trunc('day', u.created_at)
HAVING SUM(u.cost_micros) > 0
ORDER BY cost_usd DESC, day ASC
LIMIT 100;
""",
]


def _source(target: str) -> str:
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return inspect.getsource(obj)


def _prose() -> list[str]:
    paras = _PROSE_PARAGRAPHS
    out = list(paras)
    out += [paras[i] + "\n\n" + paras[i + 1] for i in range(0, len(paras), 2)]
    out += ["\n\n".join(paras[i : i + 4]) for i in (0, 4, 8)]
    out += ["\n".join(paras[i : i + 3]) for i in (1, 5, 9)]
    out.append("\n\n".join(paras))
    out += [p.split(". ")[0] + "." for p in paras[:4]]  # single sentences
    return out


def _cjk() -> list[str]:
    paras = _CJK_PARAGRAPHS
    out = list(paras)
    out += [paras[i] + "\n\n" + paras[i + 1] for i in (0, 4, 8, 12)]
    out += [p.split("。")[0] + "。" for p in (paras[1], paras[9])]
    return out


def _code() -> list[str]:
    return [_source(target) for target in _CODE_TARGETS] + list(_CODE_SNIPPETS)


# -- JSON payloads --------------------------------------------------------------------

_MODELS = ["gpt-4o-mini", "gpt-4o-2024-08-06", "gpt-4.1", "o3-mini", "claude-3-5-sonnet"]
_WORDS = " ".join(_PROSE_PARAGRAPHS).split()


def _rid(rng: random.Random, prefix: str, n: int = 29) -> str:
    return prefix + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


def _sentence(rng: random.Random, lo: int = 6, hi: int = 40) -> str:
    start = rng.randrange(len(_WORDS) - hi)
    return " ".join(_WORDS[start : start + rng.randint(lo, hi)])


def _tool(rng: random.Random, i: int) -> dict:
    name = rng.choice(["get_weather", "search_orders", "create_ticket", "lookup_user"])
    return {
        "type": "function",
        "function": {
            "name": f"{name}_{i}",
            "description": _sentence(rng, 8, 20),
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "City and country"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                },
                "required": ["location"],
                "additionalProperties": False,
            },
        },
    }


def _chat_request(rng: random.Random) -> dict:
    messages: list[dict] = [{"role": "system", "content": _sentence(rng, 10, 30)}]
    for _ in range(rng.randint(1, 6)):
        messages.append({"role": "user", "content": _sentence(rng)})
        if rng.random() < 0.3:
            call_id = _rid(rng, "call_", 24)
            args = json.dumps({"location": "Paris, FR", "unit": "celsius"})
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": args},
                        }
                    ],
                }
            )
            temp = round(rng.uniform(-5, 35), 1)
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": f'{{"temp": {temp}}}'}
            )
        messages.append({"role": "assistant", "content": _sentence(rng)})
    body: dict = {
        "model": rng.choice(_MODELS),
        "messages": messages,
        "temperature": round(rng.uniform(0, 1.5), 2),
        "max_tokens": rng.choice([256, 512, 1024, 4096]),
        "stream": rng.random() < 0.5,
    }
    if rng.random() < 0.5:
        body["tools"] = [_tool(rng, i) for i in range(rng.randint(1, 3))]
        body["tool_choice"] = "auto"
    return body


def _chat_response(rng: random.Random) -> dict:
    prompt, completion = rng.randint(10, 4000), rng.randint(1, 1500)
    return {
        "id": _rid(rng, "chatcmpl-"),
        "object": "chat.completion",
        "created": rng.randint(1_700_000_000, 1_760_000_000),
        "model": rng.choice(_MODELS),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": _sentence(rng, 20, 80)},
                "logprobs": None,
                "finish_reason": rng.choice(["stop", "length"]),
            }
            for i in range(rng.randint(1, 2))
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        },
        "system_fingerprint": _rid(rng, "fp_", 10),
    }


def _stream_chunks(rng: random.Random) -> list:
    cid, created = _rid(rng, "chatcmpl-"), rng.randint(1_700_000_000, 1_760_000_000)
    return [
        {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": " " + word}, "finish_reason": None}],
        }
        for word in _sentence(rng, 5, 15).split()
    ]


def _embeddings(rng: random.Random) -> dict:
    dims = rng.choice([16, 64, 128])
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": [round(rng.gauss(0, 0.05), 8) for _ in range(dims)],
            }
            for i in range(rng.randint(1, 3))
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 12, "total_tokens": 12},
    }


def _models(rng: random.Random) -> dict:
    return {
        "object": "list",
        "data": [
            {
                "id": m,
                "object": "model",
                "created": rng.randint(1_680_000_000, 1_760_000_000),
                "owned_by": rng.choice(["openai", "system", "meshfast"]),
            }
            for m in _MODELS
        ],
    }


def _usage_log(rng: random.Random) -> list:
    return [
        {
            "ts": f"2025-0{rng.randint(1, 9)}-{rng.randint(10, 28)}T{rng.randint(10, 23)}:"
            f"{rng.randint(10, 59)}:{rng.randint(10, 59)}.{rng.randint(100, 999)}Z",
            "request_id": _rid(rng, "req_", 20),
            "key": f"sk-mf-{_rid(rng, '', 8)}",
            "model": rng.choice(_MODELS),
            "status": rng.choice([200, 200, 200, 429, 502]),
            "latency_ms": rng.randint(80, 9000),
            "prompt_tokens": rng.randint(1, 9000),
            "completion_tokens": rng.randint(1, 2000),
            "cost_usd": round(rng.uniform(0, 0.2), 6),
        }
        for _ in range(rng.randint(2, 12))
    ]


def _json() -> list[str]:
    rng = random.Random(20250101)
    makers = [_chat_request, _chat_response, _stream_chunks, _embeddings, _models, _usage_log]
    out = []
    for i in range(24):
        obj = makers[i % len(makers)](rng)
        if i % 3 == 0:
            out.append(json.dumps(obj, indent=2))
        elif i % 3 == 1:
            out.append(json.dumps(obj, separators=(",", ":")))
        else:
            out.append(json.dumps(obj))
    return out


PROSE: list[str] = _prose()
CODE: list[str] = _code()
JSON: list[str] = _json()
CJK: list[str] = _cjk()
CORPUS: dict[str, list[str]] = {"prose": PROSE, "code": CODE, "json": JSON, "cjk": CJK}


def samples() -> list[tuple[str, int, str]]:
    """Every sample as ``(category, index, text)``."""
    return [(cat, i, text) for cat, texts in CORPUS.items() for i, text in enumerate(texts)]
